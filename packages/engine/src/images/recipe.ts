import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";

/** Accumulates everything an image is built from; the digest names the cached build. */
export class Recipe {
  private readonly hash = createHash("sha256");

  add(label: string, value: string | Buffer): this {
    this.hash.update(`${label}\0${value.length}\0`);
    this.hash.update(value);
    return this;
  }

  async addFile(label: string, path: string): Promise<this> {
    this.add(label, await sha256File(path));
    return this;
  }

  digest(): string {
    return this.hash.digest("hex").slice(0, 16);
  }
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path)
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(hash.digest("hex")));
  });
}
