import type { WatchEvent } from "@codecourier/protocol";
import type { ApiClient, RequestOptions } from "./client.js";
import { CodeCourierError, TimeoutError, errorFromResponse } from "./errors.js";
import { readNdjson } from "./ndjson.js";

export type { WatchEvent };

/** `signal`: aborting it before the watch has started fails the call; afterwards it is the same as close(). */
export interface WatchOptions extends RequestOptions {
  /**
   * Also watch every directory below `path`, including ones created or moved in later (what they already hold is
   * reported as created). Default false: only `path`'s own entries. A file is watched by its name either way.
   */
  recursive?: boolean;
}

/** A running watch: `close()` (or `await using`) ends it. */
export interface FileWatch {
  /** Stops watching; resolves once no more events will be delivered. */
  close(): Promise<void>;
  /**
   * Settles when the watch has ended: resolves after close(), or when the watched path was deleted or moved away
   * (its `remove` was the last event); rejects if the watch broke off (the sandbox was paused or stopped, the
   * connection failed) or `onEvent` threw.
   */
  readonly done: Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** The key `await using` disposes with (the registry symbol that polyfills install where the runtime lacks it). */
const asyncDispose: typeof Symbol.asyncDispose = (Symbol.asyncDispose ?? Symbol.for("Symbol.asyncDispose")) as typeof Symbol.asyncDispose;

/** A line of the server's watch stream: an event, or one of the stream's own lines. */
type WatchLine = WatchEvent | { type: "ready" } | { type: "error"; status?: number; error?: { code?: string; message?: string } };

/**
 * Watches `path` in a sandbox (absolute, or relative to /root) and calls `onEvent` for each change, in order.
 * Resolves once the sandbox is watching: whatever is done after that is reported.
 */
export async function watchPath(
  client: ApiClient,
  filesBase: string,
  path: string,
  options: WatchOptions,
  onEvent: (event: WatchEvent) => void,
): Promise<FileWatch> {
  const controller = new AbortController();
  let watching = false;
  let closing = false;
  const abortFromCaller = () => {
    closing = watching;
    controller.abort(options.signal?.reason);
  };
  if (options.signal?.aborted) abortFromCaller();
  options.signal?.addEventListener("abort", abortFromCaller, { once: true });
  const query = new URLSearchParams({ path, recursive: options.recursive ? "true" : "false" });
  let lines: AsyncGenerator<WatchLine>;
  try {
    const response = await client.raw("GET", `${filesBase}/watch`, { query, signal: controller.signal });
    if (response.body === null) throw new CodeCourierError("the server answered a watch without a body", { code: "internal" });
    lines = readNdjson<WatchLine>(response.body);
    const first = await lines.next();
    if (first.done || first.value.type !== "ready") {
      await lines.return(undefined);
      throw first.done ? new CodeCourierError("the watch ended before it started", { code: "internal" }) : failureOf(first.value);
    }
  } catch (error) {
    options.signal?.removeEventListener("abort", abortFromCaller);
    throw callerTimeout(options.signal) ?? error;
  }

  watching = true;
  const done = (async () => {
    try {
      for await (const line of lines) {
        if (line.type === "error") throw failureOf(line);
        if (line.type === "ready") continue;
        onEvent(line);
      }
    } catch (error) {
      // Our own close aborts the body read: that is the normal end, not a failure.
      if (!closing) throw error;
    } finally {
      options.signal?.removeEventListener("abort", abortFromCaller);
      controller.abort();
    }
  })();
  // `done` may go unawaited by a caller who only closes: a rejection must not become an unhandled one.
  done.catch(() => undefined);

  const close = async () => {
    closing = true;
    controller.abort();
    await done.catch(() => undefined);
  };
  return { close, done, [asyncDispose]: close };
}

/** A timeout signal of the caller's that fired while waiting for the ready line becomes a TimeoutError, as in ApiClient. */
function callerTimeout(signal: AbortSignal | undefined): TimeoutError | undefined {
  const reason = signal?.aborted ? (signal.reason as { name?: unknown } | undefined) : undefined;
  return reason?.name === "TimeoutError" ? new TimeoutError("the watch did not start in time (its AbortSignal fired)", { cause: reason }) : undefined;
}

/** The typed error for the server's last line of a broken watch (or an unexpected first line). */
function failureOf(line: WatchLine): CodeCourierError {
  if (line.type !== "error") return new CodeCourierError(`the server started a watch with a "${line.type}" line instead of ready`, { code: "internal" });
  return errorFromResponse(line.status ?? 500, JSON.stringify({ error: line.error }));
}
