/** Progress for humans goes to stderr, so stdout carries only what the command itself printed. */
export function progress(message: string): void {
  if (process.env.CODECOURIER_QUIET) return;
  process.stderr.write(`\x1b[2m• ${message}\x1b[0m\n`);
}

export function fail(message: string, exitCode = 1): never {
  process.stderr.write(`codecourier: ${message}\n`);
  process.exit(exitCode);
}

/**
 * Runs long work (create, fork, snapshot, pause) with a spinner on a terminal, or one line otherwise; stderr only,
 * so stdout stays machine-readable.
 */
export async function withProgress<T>(message: string, work: () => Promise<T>): Promise<T> {
  if (process.env.CODECOURIER_QUIET) return work();
  if (!process.stderr.isTTY) {
    progress(`${message}…`);
    return work();
  }
  const frames = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
  const started = Date.now();
  let frame = 0;
  const draw = () => process.stderr.write(`\r\x1b[2K\x1b[2m${frames[frame++ % frames.length]} ${message}\x1b[0m`);
  draw();
  const timer = setInterval(draw, 80);
  let done = false;
  try {
    const result = await work();
    done = true;
    return result;
  } finally {
    clearInterval(timer);
    process.stderr.write("\r\x1b[2K");
    if (done) progress(`${message} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  }
}
