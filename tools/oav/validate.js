#!/usr/bin/env node
/*
 * Validate recorded rsvault ARM traffic against Azure's Recovery Services specs (api-version 2026-11-01)
 * with oav's LiveValidator.
 *
 * Usage: node tools/oav/validate.js TRAFFIC_DIR [ALLOWLIST_JSON] [--require-validated]
 *
 *   TRAFFIC_DIR      directory of traffic files (*.json, searched recursively), each
 *                    {"liveRequest":{method,url,headers,body},"liveResponse":{statusCode,headers,body}}
 *   ALLOWLIST_JSON   defaults to tests/interop/oav-allowlist.json; a JSON array (or {"entries": [...]}) of
 *                    {operationId?, source?, code, path?, urlPattern?, reason}: an issue is allowed when its code equals
 *                    `code` and, when given, its operationId equals `operationId`, its side ("request" or
 *                    "response") equals `source`, and one of its payload paths equals `path` (either form
 *                    oav prints: "$.properties.foo" or "/properties/foo"), and the request path matches the
 *                    case-insensitive regex `urlPattern`.
 *   --require-validated  fail when not a single request could be validated (nothing recorded).
 *
 * Spec root: $AZURE_SPEC_DIR, default spec/azure-spec/specification in the repo.
 *
 * Only Microsoft.RecoveryServices requests are validated. Real clients send older api-versions
 * (2026-10-01, 2026-08-01, 2026-07-01, ...); LiveValidator matches operations by api-version, so the
 * recorded api-version is rewritten to 2026-11-01 first. Requests to providers we have no spec for
 * (resource groups, subscriptions, metadata, ...) are counted and listed as "not validated".
 *
 * Exit status: 0 when every issue is allowed, 1 on violations, 2 on usage or setup errors.
 */
"use strict";

const fs = require("fs");
const path = require("path");

const SPEC_API_VERSION = "2026-11-01";
const SPEC_FILES = [
  "recoveryservicesbackup/resource-manager/Microsoft.RecoveryServices/RecoveryServicesBackup/stable/2026-11-01/bms.json",
  "recoveryservices/resource-manager/Microsoft.RecoveryServices/RecoveryServices/stable/2026-11-01/openapi.json",
];
const REPO_ROOT = path.resolve(__dirname, "..", "..");
const VALIDATED_PROVIDER = /\/providers\/microsoft\.recoveryservices(\/|$)/i;

function usage(msg) {
  if (msg) console.error(`validate.js: ${msg}`);
  console.error("usage: node tools/oav/validate.js TRAFFIC_DIR [ALLOWLIST_JSON] [--require-validated]");
  process.exit(2);
}

function listJson(dir) {
  const out = [];
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) out.push(...listJson(p));
    else if (ent.isFile() && ent.name.endsWith(".json")) out.push(p);
  }
  return out.sort();
}

function loadAllowList(file) {
  if (!file || !fs.existsSync(file)) return [];
  const raw = JSON.parse(fs.readFileSync(file, "utf8"));
  const entries = Array.isArray(raw) ? raw : raw.entries || [];
  for (const e of entries) {
    if (!e.code || !e.reason) throw new Error(`allow-list entry needs code and reason: ${JSON.stringify(e)}`);
    e.used = 0;
  }
  return entries;
}

function issuePaths(issue) {
  const paths = [...(issue.pathsInPayload || [])];
  if (issue.jsonPathsInPayload) paths.push(...issue.jsonPathsInPayload);
  return paths;
}

function allowedBy(allow, issue, pathname) {
  return allow.find(
    (e) =>
      e.code === issue.code &&
      (!e.urlPattern || new RegExp(e.urlPattern, "i").test(decodeURIComponent(pathname))) &&
      (!e.operationId || e.operationId === issue.operationId) &&
      (!e.source || e.source === issue.source) &&
      (!e.path || issue.paths.includes(e.path)),
  );
}

/** Rewrite the api-version query parameter; return [newUrl, originalVersion]. */
function rewriteApiVersion(url) {
  const u = new URL(url, "https://localhost");
  const original = u.searchParams.get("api-version");
  u.searchParams.set("api-version", SPEC_API_VERSION);
  return [u.toString(), original];
}

/** Run one LiveValidator over a pair; return its issues (with .opId set on the array). */
async function validatePair(validator, livePair) {
  const result = await validator.validateLiveRequestResponse(livePair);
  const info = result.requestValidationResult.operationInfo || result.responseValidationResult.operationInfo || {};
  const opId = info.operationId && info.operationId !== "unknownOperationId" ? info.operationId : "?";
  const issues = [];
  for (const [source, r] of [
    ["request", result.requestValidationResult],
    ["response", result.responseValidationResult],
  ]) {
    for (const e of r.errors || []) {
      issues.push({ source, operationId: opId, code: e.code, message: e.message, paths: issuePaths(e) });
    }
  }
  // Runtime exceptions (operation not found, ...) are reported for request and response alike: keep one each.
  const seen = new Set();
  for (const x of [
    result.requestValidationResult.runtimeException,
    result.responseValidationResult.runtimeException,
    result.runtimeException,
  ]) {
    if (!x || seen.has(`${x.code}|${x.message}`)) continue;
    seen.add(`${x.code}|${x.message}`);
    issues.push({ source: "pair", operationId: opId, code: x.code || "RUNTIME_ERROR", message: x.message, paths: [] });
  }
  issues.opId = opId;
  return issues;
}

async function main() {
  const args = process.argv.slice(2);
  const requireValidated = args.includes("--require-validated");
  const positional = args.filter((a) => !a.startsWith("--"));
  if (positional.length < 1 || positional.length > 2) usage();
  const trafficDir = path.resolve(positional[0]);
  const allowFile = path.resolve(positional[1] || path.join(REPO_ROOT, "tests/interop/oav-allowlist.json"));
  const specRoot = path.resolve(
    process.env.AZURE_SPEC_DIR || path.join(REPO_ROOT, "spec", "azure-spec", "specification"),
  );
  if (!fs.existsSync(trafficDir)) usage(`no such traffic dir: ${trafficDir}`);
  for (const s of SPEC_FILES) {
    if (!fs.existsSync(path.join(specRoot, s))) usage(`spec not found: ${path.join(specRoot, s)} (set AZURE_SPEC_DIR)`);
  }
  const allow = loadAllowList(allowFile);

  // One LiveValidator per spec: both specs declare GET /providers/Microsoft.RecoveryServices/operations
  // (Operations_List), and a single validator over both answers MULTIPLE_OPERATIONS_FOUND for it.
  const { LiveValidator } = require("oav/dist/lib/liveValidation/liveValidator");
  const t0 = Date.now();
  const validators = [];
  for (const spec of SPEC_FILES) {
    const v = new LiveValidator(
      {
        directory: specRoot,
        swaggerPathsPattern: [spec],
        excludedSwaggerPathsPattern: ["**/examples/**/*"],
        git: { shouldClone: false },
        isPathCaseSensitive: false,
        loadValidatorInBackground: false,
        loadValidatorInInitialize: false,
        isArmCall: true, // also check LRO headers (Location / Azure-AsyncOperation on 202)
      },
      () => {}, // oav's own log lines are not needed
    );
    await v.initialize();
    if (v.swaggerList.length !== 1) {
      console.error(`validate.js: oav could not load ${path.join(specRoot, spec)}`);
      process.exit(2);
    }
    validators.push(v);
  }

  const files = listJson(trafficDir);
  const counts = { files: files.length, validated: 0, passed: 0, failed: 0, skipped: 0, allowed: 0, violations: 0 };
  for (const file of files) {
    const rel = path.relative(trafficDir, file);
    let pair;
    try {
      pair = JSON.parse(fs.readFileSync(file, "utf8"));
      if (!pair.liveRequest || !pair.liveResponse) throw new Error("missing liveRequest/liveResponse");
    } catch (e) {
      counts.violations++;
      counts.failed++;
      console.log(`FAIL  ${rel}: unreadable traffic file: ${e.message}`);
      continue;
    }
    const req = pair.liveRequest;
    const status = String(pair.liveResponse.statusCode);
    const pathname = new URL(req.url, "https://localhost").pathname;
    const label = `${String(req.method).toUpperCase()} ${pathname} -> ${status}`;
    if (!VALIDATED_PROVIDER.test(decodeURIComponent(pathname))) {
      counts.skipped++;
      console.log(`skip  ${label} (not validated: no spec for this provider) [${rel}]`);
      continue;
    }
    const [url, originalVersion] = rewriteApiVersion(req.url);
    const livePair = {
      liveRequest: { ...req, url, headers: req.headers || {} },
      liveResponse: { ...pair.liveResponse, statusCode: status, headers: pair.liveResponse.headers || {} },
    };
    counts.validated++;
    // Validate against every spec that defines the operation; the pair passes if one of them accepts it.
    let best = null;
    for (const v of validators) {
      const issues = await validatePair(v, JSON.parse(JSON.stringify(livePair)));
      const notFound = issues.some((i) => i.code.startsWith("OPERATION_NOT_FOUND"));
      const rank = notFound ? 1e9 : issues.length;
      if (best === null || rank < best.rank) best = { rank, issues };
    }
    const issues = best.issues;
    const opId = issues.opId;
    const bad = [];
    for (const i of issues) {
      const entry = allowedBy(allow, i, pathname);
      if (entry) {
        entry.used++;
        counts.allowed++;
      } else bad.push(i);
    }
    const ver = originalVersion && originalVersion !== SPEC_API_VERSION ? ` (api-version ${originalVersion})` : "";
    if (bad.length === 0) {
      counts.passed++;
      const note = issues.length ? ` [${issues.length} allowed]` : "";
      console.log(`ok    ${label} ${opId}${ver}${note}`);
    } else {
      counts.failed++;
      counts.violations += bad.length;
      console.log(`FAIL  ${label} ${opId}${ver} [${rel}]`);
      for (const i of bad) {
        const where = i.paths.length ? ` at ${i.paths.join(", ")}` : "";
        console.log(`        ${i.source} ${i.code}${where}: ${i.message}`);
      }
    }
  }
  for (const e of allow.filter((e) => e.used === 0)) {
    console.log(`note  allow-list entry not used: ${e.code} ${e.operationId || "*"} ${e.source || ""} ${e.path || ""}`);
  }
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  console.log(
    `oav summary: ${counts.files} files, ${counts.validated} validated (${counts.passed} ok, ${counts.failed} failed), ` +
      `${counts.skipped} not validated, ${counts.allowed} allowed issues, ${counts.violations} violations, ${secs}s`,
  );
  if (requireValidated && counts.validated === 0) {
    console.log("oav: no Microsoft.RecoveryServices request was recorded (--require-validated)");
    process.exit(1);
  }
  process.exit(counts.violations > 0 ? 1 : 0);
}

main().catch((e) => {
  console.error(`validate.js: ${e && e.stack ? e.stack : e}`);
  process.exit(2);
});
