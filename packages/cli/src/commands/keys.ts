import type { Command } from "commander";
import { ControlStore, controlDatabasePath } from "@codecourier/engine";
import { fail } from "../progress.js";

/**
 * `codecourier keys …`: API keys of the local data dir. Works whether or not the server runs (the control
 * database is SQLite in WAL mode); keys are shown once at creation and stored only as hashes.
 */
export function registerKeysCommands(program: Command): void {
  const keys = program.command("keys").description("Manage API keys (tenants are created with their first key)");

  keys
    .command("create")
    .description("Create an API key for a tenant")
    .requiredOption("--tenant <name>", "the tenant (created if it does not exist)")
    .option("--json", "print JSON")
    .action(async (opts: { tenant: string; json?: boolean }) => {
      const created = await withStore((store) => store.createKey(opts.tenant));
      if (opts.json) console.log(JSON.stringify({ apiKey: created.apiKey, tenant: created.tenant, keyId: created.keyId }));
      else console.log(`${created.apiKey}\n(key ${created.keyId} of tenant ${created.tenant}; shown only now)`);
    });

  keys
    .command("list")
    .description("List API keys (ids and prefixes; the keys themselves are not stored)")
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      const list = await withStore((store) => store.listKeys());
      if (opts.json) {
        console.log(JSON.stringify(list, null, 2));
        return;
      }
      for (const key of list) {
        console.log([key.keyId, key.tenant.padEnd(16), `${key.prefix}…`, key.createdAt, key.revokedAt ? `revoked ${key.revokedAt}` : "active"].join("  "));
      }
    });

  keys
    .command("revoke")
    .description("Revoke an API key: it is refused from now on")
    .argument("<keyId>", "the key's id, as `keys list` shows it")
    .action(async (keyId: string) => {
      await withStore((store) => store.revokeKey(keyId));
      console.log(`revoked ${keyId}`);
    });
}

export async function withStore<T>(use: (store: ControlStore) => Promise<T>): Promise<T> {
  const store = await ControlStore.openSqlite(controlDatabasePath());
  try {
    return await use(store);
  } catch (error) {
    fail(error instanceof Error ? error.message : String(error), 1);
  } finally {
    await store.close();
  }
}
