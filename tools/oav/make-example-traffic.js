#!/usr/bin/env node
/*
 * Build oav traffic files from the x-ms-examples of the 2026-11-01 Recovery Services specs, for the
 * validator self-test (selftest.sh).
 *
 * Usage: node tools/oav/make-example-traffic.js GOOD_DIR BAD_DIR
 *
 *   GOOD_DIR  one traffic file per (example, response status) that exists on disk: all must validate.
 *   BAD_DIR   deliberately wrong traffic derived from those examples; every file must be reported, and
 *             BAD_DIR/expected.txt lists "file<TAB>code" for the issue code each must produce.
 *   A Microsoft.Resources request (no spec) goes to GOOD_DIR too: it must be counted as not validated.
 */
"use strict";

const fs = require("fs");
const path = require("path");

const REPO_ROOT = path.resolve(__dirname, "..", "..");
const SPEC_ROOT = path.resolve(
  process.env.AZURE_SPEC_DIR || path.join(REPO_ROOT, "spec", "azure-spec", "specification"),
);
const SPEC_FILES = [
  "recoveryservicesbackup/resource-manager/Microsoft.RecoveryServices/RecoveryServicesBackup/stable/2026-11-01/bms.json",
  "recoveryservices/resource-manager/Microsoft.RecoveryServices/RecoveryServices/stable/2026-11-01/openapi.json",
];
const BASE = "https://127.0.0.1:8443";

const docs = new Map();
function loadDoc(file) {
  if (!docs.has(file)) docs.set(file, JSON.parse(fs.readFileSync(file, "utf8")));
  return docs.get(file);
}

/** Resolve a {$ref} parameter relative to the file it appears in. */
function resolveParam(p, file) {
  if (!p.$ref) return p;
  const [rel, pointer] = p.$ref.split("#");
  const target = rel ? path.resolve(path.dirname(file), rel) : file;
  let node = loadDoc(target);
  for (const part of pointer.split("/").filter(Boolean)) node = node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
  return resolveParam(node, target);
}

function writeJson(dir, name, obj) {
  fs.writeFileSync(path.join(dir, name), JSON.stringify(obj, null, 2));
}

function main() {
  const [goodDir, badDir] = process.argv.slice(2);
  if (!goodDir || !badDir) {
    console.error("usage: make-example-traffic.js GOOD_DIR BAD_DIR");
    process.exit(2);
  }
  fs.mkdirSync(goodDir, { recursive: true });
  fs.mkdirSync(badDir, { recursive: true });
  const pairs = [];
  for (const rel of SPEC_FILES) {
    const file = path.join(SPEC_ROOT, rel);
    const spec = loadDoc(file);
    for (const [tmpl, item] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(item)) {
        if (method === "parameters") continue;
        const params = [...(item.parameters || []), ...(op.parameters || [])].map((p) => resolveParam(p, file));
        for (const [title, ref] of Object.entries(op["x-ms-examples"] || {})) {
          const exFile = path.resolve(path.dirname(file), ref.$ref);
          if (!fs.existsSync(exFile)) continue;
          const ex = JSON.parse(fs.readFileSync(exFile, "utf8"));
          const ep = ex.parameters || {};
          let urlPath = tmpl;
          const query = new URLSearchParams();
          let body = null;
          for (const p of params) {
            if (!(p.name in ep)) continue;
            if (p.in === "path") urlPath = urlPath.replace(`{${p.name}}`, encodeURIComponent(ep[p.name]));
            else if (p.in === "query") query.set(p.name, ep[p.name]);
            else if (p.in === "body") body = ep[p.name];
          }
          if (/\{/.test(urlPath)) throw new Error(`${exFile}: unresolved path ${urlPath}`);
          const reqHeaders = { "content-type": "application/json", authorization: "Bearer x" };
          for (const [status, rsp] of Object.entries(ex.responses || {})) {
            const hasBody = rsp.body !== undefined;
            pairs.push({
              name: `${op.operationId}--${path.basename(exFile, ".json")}--${status}.json`,
              operationId: op.operationId,
              pair: {
                liveRequest: { method: method.toUpperCase(), url: `${BASE}${urlPath}?${query}`, headers: reqHeaders, body },
                liveResponse: {
                  statusCode: status,
                  headers: { ...(hasBody ? { "content-type": "application/json; charset=utf-8" } : {}), ...(rsp.headers || {}) },
                  body: hasBody ? rsp.body : null,
                },
              },
            });
          }
        }
      }
    }
  }
  for (const { name, pair } of pairs) writeJson(goodDir, name, pair);
  // Not validated: resource groups have no spec here (api-version as sent by azure-mgmt-resource 26).
  writeJson(goodDir, "zz-resourcegroup-not-validated.json", {
    liveRequest: { method: "GET", url: `${BASE}/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg?api-version=2025-04-01`, headers: {}, body: null },
    liveResponse: { statusCode: "200", headers: { "content-type": "application/json" }, body: { id: "x", name: "rg", location: "westus" } },
  });

  const byOp = (id) => {
    const p = pairs.find((x) => x.operationId === id && x.pair.liveResponse.statusCode === "200");
    if (!p) throw new Error(`no 200 example for ${id}`);
    return JSON.parse(JSON.stringify(p.pair));
  };
  // Variants real clients produce: older api-versions (rewritten by validate.js), a literal ';' in the
  // path (pollers follow Location URLs verbatim) and a capitalised /Subscriptions/ prefix.
  let v = byOp("Vaults_Get");
  v.liveRequest.url = v.liveRequest.url.replace("api-version=2026-11-01", "api-version=2026-07-01");
  writeJson(goodDir, "zz-vault-get-api-2026-07-01.json", v);
  v = byOp("ProtectedItemOperationResults_Get");
  v.liveRequest.url = v.liveRequest.url.replace(/%3B/g, ";").replace("api-version=2026-11-01", "api-version=2026-10-01");
  writeJson(goodDir, "zz-protecteditem-opresult-raw-semicolon.json", v);
  v = byOp("Vaults_ListByResourceGroup");
  v.liveRequest.url = v.liveRequest.url.replace("/subscriptions/", "/Subscriptions/");
  writeJson(goodDir, "zz-vaults-list-capital-subscriptions.json", v);

  // Operations_List is declared by both specs (validate.js must not report MULTIPLE_OPERATIONS_FOUND).
  writeJson(goodDir, "zz-operations-list.json", {
    liveRequest: { method: "GET", url: `${BASE}/providers/Microsoft.RecoveryServices/operations?api-version=2026-10-01`, headers: {}, body: null },
    liveResponse: {
      statusCode: "200",
      headers: { "content-type": "application/json" },
      body: { value: [{ name: "Microsoft.RecoveryServices/Vaults/read", display: { provider: "Microsoft Recovery Services", resource: "Recovery Services Vault", operation: "Get Vault", description: "Gets a vault" }, origin: "user" }] },
    },
  });

  // Deliberately wrong traffic, built from real examples.
  const expected = [];
  const bad = (name, code, pair) => {
    writeJson(badDir, name, pair);
    expected.push(`${name}\t${code}`);
  };
  let p = byOp("Vaults_Get");
  p.liveResponse.body.location = 42; // string in the spec
  bad("vault-get-location-number.json", "INVALID_TYPE", p);
  p = byOp("Vaults_Get");
  p.liveResponse.body.properties.unknownThing = { a: 1 }; // VaultProperties has no additionalProperties
  bad("vault-get-extra-property.json", "OBJECT_ADDITIONAL_PROPERTIES", p);
  p = byOp("Vaults_Get");
  p.liveResponse.statusCode = "201"; // Vaults_Get declares 200 and default only
  bad("vault-get-status-201.json", "INVALID_RESPONSE_CODE", p);
  p = byOp("Vaults_Get");
  p.liveResponse.headers = {}; // no content-type on a JSON body
  bad("vault-get-no-content-type.json", "INVALID_CONTENT_TYPE", p);
  p = byOp("Vaults_Get");
  p.liveResponse.statusCode = "404";
  p.liveResponse.body = { error: { code: 404, message: "not found" } }; // ErrorDetail.code is a string
  bad("vault-get-error-code-number.json", "INVALID_TYPE", p);
  p = byOp("Vaults_Get");
  p.liveRequest.url = p.liveRequest.url.replace("/vaults/", "/vaultz/");
  bad("vault-get-unknown-path.json", "OPERATION_NOT_FOUND_IN_CACHE", p);
  p = byOp("BackupJobs_List");
  p.liveResponse.body.value[0].properties.jobType = "NoSuchJob"; // discriminator with no subtype
  bad("jobs-list-bad-discriminator.json", "DISCRIMINATOR_VALUE_NOT_FOUND", p);
  // The az CLI sends softDeleteState "AlwaysOn" (spec: "AlwaysON"); a server echoing it is wrong too.
  p = byOp("Vaults_Get");
  p.liveRequest.method = "PUT";
  p.liveRequest.body = { location: "westus", sku: { name: "Standard" }, properties: { securitySettings: { softDeleteSettings: { softDeleteState: "AlwaysOn" } } } };
  p.liveResponse.statusCode = "201";
  p.liveResponse.body.properties.securitySettings.softDeleteSettings.softDeleteState = "AlwaysOn";
  bad("vault-put-alwayson-echoed.json", "ENUM_CASE_MISMATCH", p);
  fs.writeFileSync(path.join(badDir, "expected.txt"), expected.join("\n") + "\n");
  console.log(`wrote ${pairs.length + 5} good traffic files to ${goodDir}, ${expected.length} bad ones to ${badDir}`);
}

main();
