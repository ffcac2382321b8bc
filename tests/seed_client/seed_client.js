const ws = new WebSocket(`ws://127.0.0.1:8000/ws/transcription/?token=${token}&stt_provider=google&language=en-US`);

ws.onopen = () => {
    mediaRecorder.addEventListener('dataavailable', async (event) => {
        if (event.data.size > 0 && ws.readyState === 1) {
            const reader = new FileReader();
            reader.readAsDataURL(event.data);

            reader.onloadend = function () {
                let base64string = reader.result;
                base64string = base64string.replace('data:audio/webm;codecs=opus;base64,', '')

                ws.send(JSON.stringify({
                    action: "transcribe",
                    request_id: new Date().getTime(),
                    voice_stream: base64string
                }));
            }
        }
    })
    mediaRecorder.start(250);
}

ws.onmessage = (message) => {
    const {data} = JSON.parse(message.data);
    if (data) {
        const response = JSON.parse(data).transcript;
        console.log(`Received response ${response}`)
        document.querySelector('#response').innerText = response;
    }
}
