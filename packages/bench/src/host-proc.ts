/** Host-side readings of QEMU processes from /proc: memory (PSS), CPU time, and the host's available memory. */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

let clockTicks: number | undefined;
/** Clock ticks per second of /proc/<pid>/stat's utime and stime (getconf CLK_TCK; 100 on Linux in practice). */
export function clockTicksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** PSS of a process in KiB (/proc/<pid>/smaps_rollup). */
export function pssKiB(pid: number): number {
  const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
  if (!match) throw new Error(`no Pss in /proc/${pid}/smaps_rollup`);
  return Number(match[1]);
}

export interface PssBreakdown {
  /** The guest-RAM mapping (the snapshot's memory file, mapped private). */
  guestRam: number;
  /** TCG's translated-code buffer: the one anonymous read-write-execute mapping. */
  tcgCode: number;
  /** Other anonymous memory (QEMU heap, thread stacks, device buffers). */
  otherAnonymous: number;
  /** Other file mappings (the QEMU binary and its libraries). */
  otherFiles: number;
  /** Of all the above: anonymous memory in transparent huge pages. */
  anonHugePages: number;
}

/** PSS of a process in KiB by kind of mapping; the guest-RAM mapping is the one whose path contains `ramPathPart`. */
export function pssBreakdownKiB(pid: number, ramPathPart: string): PssBreakdown {
  const result: PssBreakdown = { guestRam: 0, tcgCode: 0, otherAnonymous: 0, otherFiles: 0, anonHugePages: 0 };
  let bucket: Exclude<keyof PssBreakdown, "anonHugePages"> = "otherAnonymous";
  for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) {
      const perms = header[1] ?? "";
      const path = header[2] ?? "";
      if (path.includes(ramPathPart)) bucket = "guestRam";
      else if (path.startsWith("/")) bucket = "otherFiles";
      else if (path === "" && perms.startsWith("rwx")) bucket = "tcgCode";
      else bucket = "otherAnonymous";
      continue;
    }
    const field = /^(Pss|AnonHugePages):\s+(\d+) kB/.exec(line);
    if (field?.[1] === "Pss") result[bucket] += Number(field[2]);
    else if (field) result.anonHugePages += Number(field[2]);
  }
  return result;
}

/** CPU time (user + system, all threads) a process has used so far, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may contain spaces) start at field 3 (state).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / clockTicksPerSecond();
}

/** The host's MemAvailable in MiB. */
export function memAvailableMiB(): number {
  const match = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"));
  if (!match) throw new Error("no MemAvailable in /proc/meminfo");
  return Number(match[1]) / 1024;
}
