"""The realtime gateway (`tickflow serve`): WebSocket rooms, the cached query API and the dashboard."""
