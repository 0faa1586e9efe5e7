import { createHash, randomBytes } from "node:crypto";

/**
 * A byte stream of `count` 1 MiB pieces, each numbered in its first 4 bytes, so that a dropped, repeated or
 * reordered piece changes the digest; `digest()` is the sha256 of what was sent (once the stream has ended).
 */
export function numberedPieces(count: number): { stream: ReadableStream<Uint8Array>; digest(): string } {
  const piece = randomBytes(1 << 20);
  const hash = createHash("sha256");
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent === count) return controller.close();
      const chunk = Buffer.from(piece);
      chunk.writeUInt32LE(sent++, 0);
      hash.update(chunk);
      controller.enqueue(chunk);
    },
  });
  return { stream, digest: () => hash.copy().digest("hex") };
}
