#!/usr/bin/env node
// Committed launcher, so npm can link the `codecourier` bin at install time, before the TypeScript build exists.
import "../dist/main.js";
