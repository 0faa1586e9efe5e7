import { constants } from "node:os";

/** Exit status a shell would give for a command killed by this signal: 128 + its number. */
export function signalExitCode(signal: string): number {
  const number = (constants.signals as Record<string, number>)[signal];
  return 128 + (number ?? 1);
}

/** The exit status to pass on for a command's result: its own, 128+signal when killed, 124 (as timeout(1)) when it timed out. */
export function commandExitStatus(result: { exitCode: number | null; signal: string | null; timedOut?: boolean }): number {
  if (result.timedOut) return 124;
  return result.exitCode ?? signalExitCode(result.signal ?? "SIGKILL");
}
