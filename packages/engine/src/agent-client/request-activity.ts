/**
 * Counts a client's requests in flight and when the last one ended, and tells a listener when one starts: the
 * engine stops the vCPUs of a sandbox nobody talks to and must start them again before a request waits on them.
 */
export class RequestActivity {
  #inFlight = 0;
  #lastEndedAt = Date.now();
  #starts = 0;
  /** Called synchronously before each request is created. */
  onRequestStarting: (() => void) | undefined;

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Milliseconds since the last request ended (0 while one is in flight). */
  get idleMs(): number {
    return this.#inFlight > 0 ? 0 : Date.now() - this.#lastEndedAt;
  }

  /** Increases with every request started; equal values mean no request started in between. */
  get starts(): number {
    return this.#starts;
  }

  requestStarting(): void {
    this.#starts++;
    this.#inFlight++;
    this.onRequestStarting?.();
  }

  requestEnded(): void {
    this.#inFlight = Math.max(0, this.#inFlight - 1);
    this.#lastEndedAt = Date.now();
  }
}
