/**
 * A sandbox's network events: the last ones kept (for streams that start late and for the audit log to come) and
 * delivered to live subscribers as they happen. A subscriber that cannot keep up is its own problem: listeners are
 * called synchronously and must not block.
 */
import type { NetworkEvent } from "@codecourier/protocol/network";
import { NETWORK_LIMITS } from "@codecourier/protocol/network";

export type NetworkEventListener = (event: NetworkEvent) => void;

export class NetworkEventLog {
  readonly #kept: NetworkEvent[] = [];
  readonly #listeners = new Set<NetworkEventListener>();

  constructor(readonly capacity: number = NETWORK_LIMITS.maxKeptEvents) {}

  record(event: NetworkEvent): void {
    this.#kept.push(event);
    if (this.#kept.length > this.capacity) this.#kept.shift();
    for (const listener of this.#listeners) listener(event);
  }

  recent(): NetworkEvent[] {
    return [...this.#kept];
  }

  /** Calls `listener` for every event from now on; returns the function that stops it. */
  subscribe(listener: NetworkEventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get subscribers(): number {
    return this.#listeners.size;
  }
}
