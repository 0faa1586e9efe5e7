import { readdirSync, readFileSync } from "node:fs";

/** QEMU processes on this host whose command line points into `runRoot` (this engine's runtime directories). */
export function findEngineQemus(runRoot: string): Array<{ pid: number; runDir: string }> {
  const found: Array<{ pid: number; runDir: string }> = [];
  const prefix = runRoot.endsWith("/") ? runRoot : `${runRoot}/`;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
    } catch {
      continue; // exited meanwhile
    }
    if (!argv[0]?.includes("qemu-system")) continue;
    for (const arg of argv) {
      const at = arg.indexOf(prefix);
      if (at < 0) continue;
      const name = arg.slice(at + prefix.length).split("/")[0];
      if (name) {
        found.push({ pid: Number(entry), runDir: prefix + name });
        break;
      }
    }
  }
  return found;
}
