export * from "./agent.js";
export * from "./http2-frames.js";
