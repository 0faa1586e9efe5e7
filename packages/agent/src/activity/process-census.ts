import { readdirSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";

/** pid, parent pid and state from /proc/<pid>/stat, or undefined if it vanished or is unreadable. */
function parseStat(text: string): { ppid: number; state: string } | undefined {
  // The command name may contain spaces and parentheses: the fields start after the last ')'.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const state = rest[0];
  const ppid = Number(rest[1]);
  return state !== undefined && Number.isInteger(ppid) ? { ppid, state } : undefined;
}

function isUserland(pid: number, stat: { ppid: number; state: string } | undefined): boolean {
  // Kernel threads are kthreadd (pid 2) and its children; zombies are about to be reaped by PID 1.
  return stat !== undefined && pid !== 2 && stat.ppid !== 2 && stat.state !== "Z";
}

const numericEntries = (names: string[]) => names.filter((name) => /^\d+$/.test(name)).map(Number);

/**
 * Counts the guest's processes that are not the guest's own plumbing (init, the agent, its helpers): the
 * processes present when the agent started are plumbing, since no command has run yet. The host stops the vCPUs
 * of a sandbox only when nothing else runs, so a daemon a command left behind (reparented to init, unknown to the
 * agent) keeps its sandbox awake.
 */
export class ProcessCensus {
  readonly #plumbing: Set<number>;

  constructor(private readonly procRoot = "/proc") {
    this.#plumbing = new Set(
      numericEntries(readdirSync(procRoot)).filter((pid) => {
        try {
          return isUserland(pid, parseStat(readFileSync(`${procRoot}/${pid}/stat`, "utf8")));
        } catch {
          return false;
        }
      }),
    );
  }

  /** Userland processes other than the plumbing and `alsoPlumbing` (e.g. a restarted helper). */
  async otherProcesses(alsoPlumbing: ReadonlyArray<number | undefined>): Promise<number> {
    const excluded = new Set(alsoPlumbing.filter((pid): pid is number => pid !== undefined));
    let count = 0;
    for (const pid of numericEntries(await readdir(this.procRoot))) {
      if (this.#plumbing.has(pid) || excluded.has(pid)) continue;
      const text = await readFile(`${this.procRoot}/${pid}/stat`, "utf8").catch(() => undefined);
      if (text !== undefined && isUserland(pid, parseStat(text))) count++;
    }
    return count;
  }
}
