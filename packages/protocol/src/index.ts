export * from "./agent.js";
export * from "./http2-frames.js";
export * from "./agent-handshake.js";
