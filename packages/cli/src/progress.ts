/** Progress for humans goes to stderr, so stdout carries only what the command itself printed. */
export function progress(message: string): void {
  if (process.env.CODECOURIER_QUIET) return;
  process.stderr.write(`\x1b[2m• ${message}\x1b[0m\n`);
}

export function fail(message: string, exitCode = 1): never {
  process.stderr.write(`codecourier: ${message}\n`);
  process.exit(exitCode);
}

export function parsePositiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) fail(`--${name} must be a positive integer, got "${value}"`, 2);
    return n;
  };
}
