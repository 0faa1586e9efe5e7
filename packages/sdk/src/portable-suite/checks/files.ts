// Files: text and bytes both ways, a streamed write and a streamed read, stat, exists, list. Bytes are compared
// by SHA-256 (crypto.subtle, the same on all three runtimes) and against the guest's own sha256sum, so a
// corruption on either leg shows.
import { NotFoundError } from "../../index.js";
import { assertEqual, assertOk, assertRejects, mainSandbox, type Check } from "../harness.js";

const DIR = "suite-files";
/** Not ASCII, so a wrong text encoding on any runtime shows. */
const TEXT = "hello, files — ünïcödé ✓\nsecond line\n";
const BYTES_LENGTH = 1024 * 1024;
const STREAM_CHUNK = 64 * 1024;
const STREAM_CHUNKS = 16;

/** Random bytes; getRandomValues fills at most 64 KiB per call on every runtime. */
function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += 65536) crypto.getRandomValues(bytes.subarray(offset, Math.min(offset + 65536, length)));
  return bytes;
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const whole = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    whole.set(chunk, offset);
    offset += chunk.length;
  }
  return whole;
}

export const fileChecks: Check[] = [
  {
    name: "files: write and read text (into a new directory), stat, exists",
    async run(context) {
      const sandbox = mainSandbox(context);
      const path = `${DIR}/notes/hello.txt`;
      const written = await sandbox.files.write(path, TEXT);
      const byteLength = new TextEncoder().encode(TEXT).length;
      assertEqual(written.size, byteLength, "write's stat: size in bytes");
      assertEqual(written.type, "file", "write's stat: type");
      assertEqual(await sandbox.files.read(path), TEXT, "read as text");
      assertEqual((await sandbox.runCommand(["cat", `/root/${path}`])).stdout, TEXT, "the guest sees the same text (relative paths are under /root)");
      const stat = await sandbox.files.stat(path);
      assertEqual([stat.type, stat.size], ["file", byteLength], "stat type and size");
      assertOk(Math.abs(stat.mtimeMs - Date.now()) < 10 * 60_000, `mtime is about now: ${new Date(stat.mtimeMs).toISOString()}`);
      assertEqual((await sandbox.files.stat(DIR)).type, "directory", "the parent directory was made");
      assertEqual(await sandbox.files.exists(path), true, "exists(file)");
      assertEqual(await sandbox.files.exists(`${DIR}/nothing-here`), false, "exists(missing)");
      await assertRejects(sandbox.files.read(`${DIR}/nothing-here`), NotFoundError, "read of a missing file");
    },
  },
  {
    name: "files: write and read bytes (1 MiB, sha256 equal), mode",
    async run(context) {
      const sandbox = mainSandbox(context);
      const bytes = randomBytes(BYTES_LENGTH);
      const expected = await sha256Hex(bytes);
      await sandbox.files.write(`${DIR}/random.bin`, bytes);
      const read = await sandbox.files.read(`${DIR}/random.bin`, { format: "bytes" });
      assertOk(read instanceof Uint8Array, "read as bytes gives a Uint8Array");
      assertEqual(read.length, BYTES_LENGTH, "length read back");
      assertEqual(await sha256Hex(read), expected, "sha256 of the bytes read back");
      assertEqual((await sandbox.runCommand(["sha256sum", `${DIR}/random.bin`])).stdout.split(" ")[0], expected, "sha256 in the guest");

      const script = await sandbox.files.write(`${DIR}/run.sh`, "#!/bin/sh\necho ran\n", { mode: 0o755 });
      assertEqual(script.mode & 0o777, 0o755, "mode as given");
      assertEqual((await sandbox.runCommand(`./${DIR}/run.sh`)).stdout, "ran\n", "an executable written with mode 0o755 runs");
    },
  },
  {
    name: "files: write a ReadableStream, read a stream (1 MiB in 64 KiB chunks)",
    async run(context) {
      const sandbox = mainSandbox(context);
      const chunks = Array.from({ length: STREAM_CHUNKS }, () => randomBytes(STREAM_CHUNK));
      const expected = await sha256Hex(concat(chunks));
      let next = 0;
      // Produced on demand (pull), so the body is really streamed rather than handed over whole.
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (next < chunks.length) controller.enqueue(chunks[next++]!);
          else controller.close();
        },
      });
      const written = await sandbox.files.write(`${DIR}/streamed.bin`, body);
      assertEqual(next, STREAM_CHUNKS, "every chunk was pulled");
      assertEqual(written.size, STREAM_CHUNK * STREAM_CHUNKS, "size written");

      const stream = await sandbox.files.read(`${DIR}/streamed.bin`, { format: "stream" });
      assertOk(stream instanceof ReadableStream, "read as stream gives a ReadableStream");
      const reader = stream.getReader();
      const received: Uint8Array[] = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received.push(value);
      }
      assertEqual(await sha256Hex(concat(received)), expected, "sha256 of the stream read back");
    },
  },
  {
    name: "files: list a directory",
    async run(context) {
      const sandbox = mainSandbox(context);
      const entries = await sandbox.files.list(DIR);
      const sorted = entries.map((entry) => `${entry.name}:${entry.type}`).sort();
      assertEqual(sorted, ["notes:directory", "random.bin:file", "run.sh:file", "streamed.bin:file"], "entries of the directory");
      await assertRejects(sandbox.files.list(`${DIR}/nothing-here`), NotFoundError, "list of a missing directory");
    },
  },
];
