import { PassThrough, type Readable } from "node:stream";
import type { ControlStore } from "../control/control-store.js";

/**
 * The streams open per API key (process output, watches, network events, file reads), so that revoking a key
 * ends them: a revoked key must not keep a follow open for days. Keys are revoked by `codecourier keys revoke`,
 * another process writing control.db, so the server notices by polling: one query every `pollMs` for all the keys
 * that have streams open, and none while no stream is open.
 */
export class KeyStreams {
  readonly #open = new Map<string, Set<TrackedStream>>();
  readonly #timer: NodeJS.Timeout;
  #polling = false;

  constructor(
    private readonly store: ControlStore,
    pollMs: number,
    private readonly log: (line: string) => void,
  ) {
    this.#timer = setInterval(() => void this.checkRevocations(), pollMs);
    this.#timer.unref();
  }

  /** Streams open with this key now. */
  openCount(keyId: string): number {
    return this.#open.get(keyId)?.size ?? 0;
  }

  /**
   * The stream to answer with: `source`'s bytes until revocation, when NDJSON streams end with an error line (the
   * status was sent long ago) and byte streams are cut off. Closing it (the client left) destroys the source.
   */
  track(keyId: string, source: Readable, contentType: string): Readable {
    const answer = new PassThrough();
    const onSourceError = (error: Error) => answer.destroy(error);
    const tracked: TrackedStream = { source, answer, ndjson: contentType.includes("ndjson"), onSourceError };
    let streams = this.#open.get(keyId);
    if (streams === undefined) this.#open.set(keyId, (streams = new Set()));
    streams.add(tracked);
    source.pipe(answer);
    source.once("error", onSourceError);
    answer.once("close", () => {
      if (!source.destroyed) source.destroy();
      streams.delete(tracked);
      if (streams.size === 0 && this.#open.get(keyId) === streams) this.#open.delete(keyId);
    });
    return answer;
  }

  /** Ends the streams of keys revoked since they were opened. One check at a time. */
  async checkRevocations(): Promise<void> {
    if (this.#polling || this.#open.size === 0) return;
    this.#polling = true;
    try {
      for (const keyId of await this.store.revokedKeyIds([...this.#open.keys()])) {
        const streams = this.#open.get(keyId);
        if (streams === undefined) continue;
        this.#open.delete(keyId);
        for (const stream of streams) endRevoked(stream);
        this.log(`API key ${keyId} was revoked: ended its ${streams.size} open streams`);
      }
    } catch (error) {
      this.log(`checking for revoked keys failed: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.#polling = false;
    }
  }

  close(): void {
    clearInterval(this.#timer);
  }
}

interface TrackedStream {
  source: Readable;
  answer: PassThrough;
  ndjson: boolean;
  onSourceError: (error: Error) => void;
}

function endRevoked({ source, answer, ndjson, onSourceError }: TrackedStream): void {
  source.unpipe(answer);
  source.off("error", onSourceError);
  source.on("error", () => {}); // whatever the source says while it is torn down, nobody listens any more
  source.destroy();
  if (ndjson) {
    const error = { code: "unauthorized", message: "the API key of this stream was revoked" };
    answer.end(`${JSON.stringify({ type: "error", status: 401, error })}\n`);
  } else {
    answer.destroy(new Error("the API key of this stream was revoked"));
  }
}
