/**
 * Signals a command's whole process group. Commands are spawned detached (setsid), so the group id equals the
 * leader's pid and includes every descendant that did not start its own session: killing the group leaves no
 * orphans behind. Returns false when the group no longer exists.
 */
export function signalProcessGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw error;
  }
}
