import type { Command } from "commander";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, stat, utimes } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { NotFoundError, Sandbox } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { fail, withProgress } from "../progress.js";

/** One side of a copy: a local path (or - for stdin/stdout), or SANDBOX:PATH. */
type Location = { kind: "local"; path: string } | { kind: "sandbox"; sandboxId: string; path: string };

/** SANDBOX:PATH is a sandbox's path; anything else is local (write ./a:b for a local name with a colon). */
export function parseLocation(text: string): Location {
  const match = /^([A-Za-z0-9_-]+):(.*)$/.exec(text);
  if (match === null) return { kind: "local", path: text };
  return { kind: "sandbox", sandboxId: match[1]!, path: match[2] === "" ? "." : match[2]! };
}

/** `codecourier cp`: files and directories between this machine and a sandbox, either way. */
export function registerCopyCommand(program: Command): void {
  withConnectionOptions(program.command("cp"))
    .summary("Copy files or directories between this machine and a sandbox")
    .description(
      "Copy a file or a directory between this machine and a sandbox (a paused one is resumed). Write the sandbox's " +
        "side as SANDBOX:PATH (relative paths start at /root); - is stdin or stdout for a file. Directories are copied " +
        "incrementally (only what changed), keeping modes and modification times; a copy into an existing directory " +
        "lands inside it, as with cp.",
    )
    .argument("<source>", "LOCAL_PATH or SANDBOX:PATH")
    .argument("<destination>", "LOCAL_PATH or SANDBOX:PATH")
    .action(async (sourceText: string, destinationText: string, flags: ConnectionFlags) => {
      const source = parseLocation(sourceText);
      const destination = parseLocation(destinationText);
      if (source.kind === destination.kind) fail("cp copies between this machine and a sandbox: exactly one side is SANDBOX:PATH", 2);
      if (source.kind === "local" && destination.kind === "sandbox") await upload(source.path, destination, flags);
      else if (source.kind === "sandbox" && destination.kind === "local") await download(source, destination.path, flags);
    });
}

async function upload(localPath: string, to: { sandboxId: string; path: string }, flags: ConnectionFlags): Promise<void> {
  const sandbox = await Sandbox.connect(to.sandboxId, connection(flags));
  if (localPath === "-") {
    await sandbox.files.write(to.path, Readable.toWeb(process.stdin) as ReadableStream<Uint8Array>);
    return;
  }
  const info = await stat(localPath).catch(() => fail(`${localPath}: no such file or directory`));
  const remote = (await isRemoteDirectory(sandbox, to.path)) ? join(to.path, basename(localPath)) : to.path;
  if (info.isDirectory()) {
    const summary = await withProgress(`copying ${localPath} to ${to.sandboxId}:${remote}`, () =>
      sandbox.files.sync(localPath, remote, { direction: "up" }),
    );
    process.stderr.write(`${summary.uploaded} file(s) copied, ${summary.unchanged} unchanged\n`);
    return;
  }
  await withProgress(`copying ${localPath} to ${to.sandboxId}:${remote}`, () =>
    sandbox.files.write(remote, Readable.toWeb(createReadStream(localPath)) as ReadableStream<Uint8Array>, {
      mode: info.mode & 0o7777,
      mtime: info.mtime,
    }),
  );
}

async function download(from: { sandboxId: string; path: string }, localPath: string, flags: ConnectionFlags): Promise<void> {
  const sandbox = await Sandbox.connect(from.sandboxId, connection(flags));
  const remote = await sandbox.files.stat(from.path);
  if (localPath === "-") {
    if (remote.type === "directory") fail(`${from.sandboxId}:${from.path} is a directory; copy it to a local directory`, 2);
    await pipeline(Readable.fromWeb((await sandbox.files.read(from.path, { format: "stream" })) as never), process.stdout);
    return;
  }
  const localInfo = await stat(localPath).catch(() => undefined);
  const target = localInfo?.isDirectory() ? join(localPath, basename(remote.path)) : localPath;
  if (remote.type === "directory") {
    const summary = await withProgress(`copying ${from.sandboxId}:${from.path} to ${target}`, () =>
      sandbox.files.sync(target, from.path, { direction: "down" }),
    );
    process.stderr.write(`${summary.downloaded} file(s) copied, ${summary.unchanged} unchanged\n`);
    return;
  }
  await mkdir(dirname(target), { recursive: true });
  await withProgress(`copying ${from.sandboxId}:${from.path} to ${target}`, async () => {
    const body = await sandbox.files.read(from.path, { format: "stream" });
    await pipeline(Readable.fromWeb(body as never), createWriteStream(target, { mode: remote.mode & 0o777 }));
  });
  await utimes(target, new Date(), new Date(remote.mtimeMs));
}

async function isRemoteDirectory(sandbox: Sandbox, path: string): Promise<boolean> {
  try {
    return (await sandbox.files.stat(path)).type === "directory";
  } catch (error) {
    if (error instanceof NotFoundError) return false;
    throw error;
  }
}
