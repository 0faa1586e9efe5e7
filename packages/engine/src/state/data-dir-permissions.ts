import { chmodSync, lstatSync, readdirSync, type Stats } from "node:fs";
import { join } from "node:path";

/**
 * The data dir holds tenants' data: guest RAM in memory files, disks, the control and state databases (API key
 * hashes, env). Only the user the server runs as may read it: directories 0700, files 0600.
 */
export const PRIVATE_UMASK = 0o077;
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/**
 * Makes every file and directory this process creates from now on private — children too (QEMU writes memory
 * files and qcow2 overlays; it inherits the umask). Returns the umask it replaced.
 */
export function restrictUmask(): number {
  return process.umask(PRIVATE_UMASK);
}

/**
 * Runs `work` under the usual umask 022: for building guest images, whose files keep their modes inside the guest
 * (an agent bundle made 0600 could not be run by the guest's non-root users). Only for work that runs while
 * nothing else in the process creates files (the server's start), since the umask is the whole process's.
 */
export async function withGuestImageUmask<T>(work: () => Promise<T>): Promise<T> {
  const previous = process.umask(0o022);
  try {
    return await work();
  } finally {
    process.umask(previous);
  }
}

/** Entries of the data dir that hold tenant or key data, and the directories among them whose entries do too. */
const PRIVATE_FILES = ["control.db", "control.db-wal", "control.db-shm", "state.db", "state.db-wal", "state.db-shm", "engine.lock", "admin-key", "accel.json"];
/** Directories whose own entries (one level) are checked too: per-VM run dirs, per-snapshot dirs. */
const PRIVATE_TREES = ["run", "disks", "snapshots", "logs"];

export interface PermissionReport {
  /** What was open to others and was made private (paths with their old and new modes). */
  fixed: string[];
  /** What is open to others and was left as it is (not ours to change, or the change failed), and why. */
  problems: string[];
}

/**
 * Checks that the data dir's top levels are private to this user — the dir itself, the databases, and the run,
 * disks, snapshots and logs dirs with their entries and those entries' files (a snapshot dir's memory file) — and
 * removes the group and other bits where the file is ours. Symlinks are not followed (a test's data dir links
 * the shared, public guest images). Bounded: at most `maxEntries` paths are looked at.
 */
export function secureDataDir(dir: string, { maxEntries = 100_000 }: { maxEntries?: number } = {}): PermissionReport {
  const report: PermissionReport = { fixed: [], problems: [] };
  const uid = process.getuid?.();
  let budget = maxEntries;
  const check = (path: string, info: Stats) => {
    const mode = info.mode & 0o777;
    if ((mode & 0o077) === 0) return;
    const wanted = mode & ~0o077;
    if (uid !== undefined && info.uid !== uid) {
      report.problems.push(`${path} is ${octal(mode)} and owned by uid ${info.uid}, not this user (${uid}): make it ${octal(wanted)} yourself`);
      return;
    }
    try {
      chmodSync(path, wanted);
      report.fixed.push(`${path}: ${octal(mode)} → ${octal(wanted)}`);
    } catch (error) {
      report.problems.push(`${path} is ${octal(mode)} and could not be changed: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  const visit = (path: string, depth: number) => {
    if (budget-- <= 0) return;
    let info: Stats;
    try {
      info = lstatSync(path);
    } catch {
      return; // gone meanwhile, or never made: nothing to protect
    }
    if (info.isSymbolicLink()) return;
    check(path, info);
    if (depth > 0 && info.isDirectory()) {
      let names: string[];
      try {
        names = readdirSync(path);
      } catch {
        return;
      }
      for (const name of names) visit(join(path, name), depth - 1);
    }
  };
  visit(dir, 0);
  for (const name of PRIVATE_FILES) visit(join(dir, name), 0);
  // Two levels below each tree: run/vm-ID/{memory, overlay, sockets}, snapshots/ID/{memory, state}.
  for (const name of PRIVATE_TREES) visit(join(dir, name), 2);
  return report;
}

const octal = (mode: number) => `0${mode.toString(8).padStart(3, "0")}`;
