/** One-line diagnostics on stderr, which is the guest console. Never throws. */
export function logProblem(message: string, error?: unknown): void {
  const detail = error === undefined ? "" : `: ${describeError(error)}`;
  try {
    process.stderr.write(`[cc-agent] ${message}${detail}\n`);
  } catch {
    // Nothing sensible left to do when the console itself fails.
  }
}

function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === undefined ? error.message : `${code} ${error.message}`;
  }
  return String(error);
}
