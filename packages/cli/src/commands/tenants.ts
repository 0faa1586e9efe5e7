import type { Command } from "commander";
import { DEFAULT_TENANT_LIMITS, type TenantLimits } from "@codecourier/engine";
import { fail } from "../progress.js";
import { withStore } from "./keys.js";

/** CLI option → limit, with how each is given (counts, MB, or bytes with an optional K/M/G/T suffix). */
const LIMIT_OPTIONS: Array<{ flag: string; limit: keyof TenantLimits; bytes?: boolean; help: string }> = [
  { flag: "max-sandboxes", limit: "maxSandboxes", help: "live sandboxes at once" },
  { flag: "max-cpus", limit: "maxCpus", help: "vCPUs of one sandbox" },
  { flag: "max-memory-mb", limit: "maxMemoryMB", help: "MB of RAM of one sandbox" },
  { flag: "max-total-cpus", limit: "maxTotalCpus", help: "vCPUs of all live sandboxes" },
  { flag: "max-total-memory-mb", limit: "maxTotalMemoryMB", help: "MB of RAM of all live sandboxes" },
  { flag: "max-disk-mb", limit: "maxDiskMB", help: "MB of root disk of one sandbox" },
  { flag: "max-total-disk-mb", limit: "maxTotalDiskMB", help: "MB of root disk of all live sandboxes" },
  { flag: "max-snapshots", limit: "maxSnapshots", help: "snapshots kept" },
  { flag: "max-snapshot-bytes", limit: "maxSnapshotBytes", bytes: true, help: "bytes of all snapshots (e.g. 20G)" },
];

/**
 * `codecourier tenants …`: tenants of the local data dir and their limits. Like `keys`, it works on the control
 * database directly, whether or not the server runs; the server reads limits on every request.
 */
export function registerTenantCommands(program: Command): void {
  const tenants = program.command("tenants").description("List tenants and set their limits");

  tenants
    .command("list")
    .description("List tenants with their limits")
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      const list = await withStore((store) => store.listTenants());
      if (opts.json) console.log(JSON.stringify(list.map(({ name, limits }) => ({ name, limits })), null, 2));
      else for (const tenant of list) console.log(`${tenant.name.padEnd(16)}  ${Object.entries(tenant.limits).map(([k, v]) => `${k}=${v}`).join(" ")}`);
    });

  const limits = tenants
    .command("limits")
    .description(`Set a tenant's limits (the others stay; defaults: ${Object.entries(DEFAULT_TENANT_LIMITS).map(([k, v]) => `${k}=${v}`).join(", ")})`)
    .argument("<tenant>", "the tenant's name")
    .option("--json", "print the tenant's limits as JSON");
  for (const option of LIMIT_OPTIONS) limits.option(`--${option.flag} <n>`, option.help);
  limits.action(async (name: string, opts: Record<string, string | boolean | undefined>) => {
    const changes: Partial<TenantLimits> = {};
    for (const option of LIMIT_OPTIONS) {
      const key = option.flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
      const value = opts[key];
      if (typeof value === "string") changes[option.limit] = parseLimit(value, option.flag, option.bytes ?? false);
    }
    const tenant = await withStore((store) => store.setTenantLimits(name, changes));
    if (opts.json) console.log(JSON.stringify(tenant.limits));
    else console.log(`${tenant.name}: ${Object.entries(tenant.limits).map(([k, v]) => `${k}=${v}`).join(" ")}`);
  });
}

const SUFFIXES: Record<string, number> = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

function parseLimit(text: string, flag: string, bytes: boolean): number {
  const match = /^(\d+)([KMGT]?)$/i.exec(text.trim());
  const suffix = match?.[2]?.toUpperCase() ?? "";
  if (!match || (!bytes && suffix !== "")) fail(`--${flag} takes a whole number${bytes ? " (optionally with K, M, G or T)" : ""}, not ${JSON.stringify(text)}`, 2);
  const value = Number(match[1]) * SUFFIXES[suffix]!;
  if (!Number.isSafeInteger(value)) fail(`--${flag} ${text} is too large`, 2);
  return value;
}
