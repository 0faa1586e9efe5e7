import { CodeCourierError } from "./errors.js";

/** Content type of the server's event streams (command output, file watch): one JSON value per line. */
export const NDJSON_CONTENT_TYPE = "application/x-ndjson";

/** Longest line accepted from the server; a longer one means a broken or hostile stream. */
const MAX_LINE_BYTES = 4 * 1024 * 1024;

/**
 * The JSON values of a newline-delimited JSON byte stream, in order, as they arrive. Uses only web streams and
 * TextDecoder, so it runs on Node, Bun and Deno. Ending the iteration early cancels the stream.
 */
export async function* readNdjson<T>(body: ReadableStream<Uint8Array>): AsyncGenerator<T> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim() !== "") yield parseLine<T>(line);
      }
      if (buffered.length > MAX_LINE_BYTES) throw new CodeCourierError("the server sent an event line over 4 MiB", { code: "internal" });
    }
    buffered += decoder.decode();
    if (buffered.trim() !== "") yield parseLine<T>(buffered);
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

function parseLine<T>(line: string): T {
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new CodeCourierError("the server sent an event that is not JSON", { code: "internal" });
  }
}
