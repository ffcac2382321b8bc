// A live session through the official @deepgram/sdk (5.13), as its README shows it, against a
// stt_server. Driven by tests/test_clients_deepgram.py; prints one JSON line per event.
//   node deepgram_live.mjs BASE_URL TOKEN PCM16_FILE [session|stream]
// "session" (default): half the audio, KeepAlive, Finalize, the rest, silence, CloseStream.
// "stream": the audio at 2x real time, reporting progress, until the server closes (the test
// stops the server meanwhile).
import { readFileSync } from "node:fs";
import { DeepgramClient } from "@deepgram/sdk";

const [baseUrl, token, pcmPath, mode = "session"] = process.argv.slice(2);
const pcm = readFileSync(pcmPath);
const CHUNK = 3200; // 100 ms of 16 kHz PCM16
const out = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const client = new DeepgramClient({ apiKey: token, baseUrl });
const connection = await client.listen.v1.connect({
  model: "nova-3",
  encoding: "linear16",
  sample_rate: 16000,
  interim_results: "true",
  punctuate: "true",
  utterance_end_ms: "1000",
  vad_events: "true",
  Authorization: `Token ${token}`,
  reconnectAttempts: 0,
});
let answeredFinalize = false;
connection.on("message", (message) => {
  if (message.type === "Results" && message.from_finalize) answeredFinalize = true;
  out({ event: "message", message });
});
connection.on("error", (error) => out({ event: "error", error: String(error?.message ?? error) }));
const closed = new Promise((resolve) => {
  connection.on("close", (event) => {
    out({ event: "close", code: event.code, reason: event.reason });
    resolve();
  });
});
connection.connect();
await connection.waitForOpen();

async function send(audio) {
  for (let i = 0; i < audio.length; i += CHUNK) {
    connection.sendMedia(audio.subarray(i, i + CHUNK));
    await sleep(20);
  }
}

if (mode === "stream") {
  let sent = 0;
  for (let i = 0; i < pcm.length && connection.readyState === 1; i += CHUNK) {
    try {
      connection.sendMedia(pcm.subarray(i, i + CHUNK));
    } catch (error) {
      break; // the server stopped reading
    }
    sent += 1;
    if (sent % 10 === 0) out({ event: "sent", chunks: sent });
    await sleep(50);
  }
  await closed;
  process.exit(0);
}

const half = Math.floor(pcm.length / 2 / CHUNK) * CHUNK;
await send(pcm.subarray(0, half));
connection.sendKeepAlive({ type: "KeepAlive" });
connection.sendFinalize({ type: "Finalize" });
for (let waited = 0; !answeredFinalize && waited < 60000; waited += 50) await sleep(50);
await send(pcm.subarray(half));
await send(Buffer.alloc(16000 * 2 * 2)); // 2 s of silence: room for UtteranceEnd
connection.sendCloseStream({ type: "CloseStream" });
await closed;
process.exit(0);
