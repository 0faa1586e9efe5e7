import { fail } from "./progress.js";

/**
 * Option-argument parsers for commander. A bad value is a usage error: `codecourier: …` and exit 2, like the
 * errors commander itself reports.
 */

export function parsePositiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) fail(`--${name} must be a positive integer, got "${value}"`, 2);
    return n;
  };
}

/**
 * Collects `KEY=VALUE` arguments into a record, for an option that is variadic (`-e A=1 B=2`), repeated
 * (`-e A=1 -e B=2`) or both; a later key wins. The value may itself contain `=`.
 */
export function collectKeyValues(name: string) {
  return (pair: string, previous: Record<string, string> | undefined): Record<string, string> => {
    const eq = pair.indexOf("=");
    if (eq <= 0) fail(`--${name} expects KEY=VALUE, got "${pair}"`, 2);
    return { ...previous, [pair.slice(0, eq)]: pair.slice(eq + 1) };
  };
}
