// Files as a disk: mkdir, rename, chmod, remove, a given mtime, a deep listing, and a write large enough to go as a
// chunked upload (from a stream, so each runtime's stream reading and fetch of Uint8Array chunks are both used).
import { ConflictError, NotFoundError } from "../../index.js";
import { assertEqual, assertOk, assertRejects, mainSandbox, type Check } from "../harness.js";

const DIR = "suite-disk";
/** Over the SDK's 16 MiB threshold, so the write goes in chunks (three of 8 MiB at most). */
const LARGE_BYTES = 20 * 1024 * 1024;

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export const fileDiskChecks: Check[] = [
  {
    name: "files: mkdir, rename, chmod, remove (typed errors), mtime, list with depth",
    async run(context) {
      const { files } = mainSandbox(context);
      assertEqual((await files.mkdir(`${DIR}/a/b`)).type, "directory", "mkdir -p");
      await assertRejects(files.mkdir(`${DIR}/a`, { recursive: false }), ConflictError, "mkdir of an existing directory without recursive");
      await files.write(`${DIR}/a/b/draft.txt`, "draft");
      const renamed = await files.rename(`${DIR}/a/b/draft.txt`, `${DIR}/a/final.txt`);
      assertEqual([renamed.path, renamed.size], [`/root/${DIR}/a/final.txt`, 5], "rename's stat");
      assertEqual((await files.chmod(`${DIR}/a/final.txt`, 0o600)).mode, 0o600, "chmod");
      const mtime = new Date("2020-02-02T02:02:02.222Z");
      assertEqual((await files.write(`${DIR}/a/dated.txt`, "then", { mtime })).mtimeMs, mtime.getTime(), "the given mtime");
      const listed = (await files.list(DIR, { depth: 3 })).map((entry) => `${entry.name}:${entry.type}`);
      assertEqual(listed, ["a:directory", "a/b:directory", "a/dated.txt:file", "a/final.txt:file"], "a listing three levels deep");
      await assertRejects(files.remove(`${DIR}/a`), ConflictError, "remove of a directory with entries, without recursive");
      await files.remove(`${DIR}/a`, { recursive: true });
      assertEqual(await files.exists(`${DIR}/a`), false, "removed recursively");
      await assertRejects(files.remove(`${DIR}/a`), NotFoundError, "remove of a missing path");
    },
  },
  {
    name: "files: a 20 MiB stream goes as a chunked upload and arrives intact",
    async run(context) {
      const { files } = mainSandbox(context);
      const data = new Uint8Array(LARGE_BYTES);
      for (let i = 0; i < data.length; i += 4096) data[i] = (i / 4096) % 251;
      let offset = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (offset >= data.length) return controller.close();
          controller.enqueue(data.slice(offset, offset + 256 * 1024));
          offset += 256 * 1024;
        },
      });
      const progress: number[] = [];
      const written = await files.write(`${DIR}/large.bin`, body, { onProgress: (p) => progress.push(p.received) });
      assertEqual(written.size, LARGE_BYTES, "size written");
      assertEqual(progress, [8 * 1024 * 1024, 16 * 1024 * 1024, LARGE_BYTES], "chunks the server acknowledged");
      const guestHash = (await mainSandbox(context).runCommand(["sha256sum", `${DIR}/large.bin`])).stdout.split(" ")[0];
      assertEqual(guestHash, await sha256Hex(data), "sha256 in the guest");
      assertOk((await files.list(DIR)).every((entry) => !entry.name.includes("cc-upload")), "no partial file left");
    },
  },
];
