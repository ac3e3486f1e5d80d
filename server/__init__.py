"""seetalk server: the conversation engine and its transports (WebRTC, HTTP)."""
