#!/usr/bin/env bash
# Self-test of tools/oav/validate.js: traffic built from Azure's own spec examples must pass, and
# deliberately wrong traffic must fail with the expected oav issue codes; the allow-list must work.
# Usage: tools/oav/selftest.sh   (needs `npm ci` in tools/oav; honours AZURE_SPEC_DIR)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "oav selftest FAILED: $*" >&2; exit 1; }

node "$here/make-example-traffic.js" "$tmp/good" "$tmp/bad"
echo '[]' > "$tmp/empty-allow.json"

# 1. Spec examples (plus api-version / ';' / casing variants) validate; the resource-group request is skipped.
if ! node "$here/validate.js" "$tmp/good" "$tmp/empty-allow.json" --require-validated > "$tmp/good.out"; then
  cat "$tmp/good.out"; fail "spec examples did not validate"
fi
good_total=$(ls "$tmp/good" | wc -l)
grep -q "^oav summary: $good_total files, $((good_total - 1)) validated ($((good_total - 1)) ok, 0 failed), 1 not validated" "$tmp/good.out" \
  || { cat "$tmp/good.out"; fail "unexpected summary for good traffic"; }

# 2. Every wrong file fails, with its expected issue code.
set +e
node "$here/validate.js" "$tmp/bad" "$tmp/empty-allow.json" > "$tmp/bad.out"; rc=$?
set -e
[ "$rc" = 1 ] || { cat "$tmp/bad.out"; fail "bad traffic: exit $rc, expected 1"; }
nbad=0
while IFS=$'\t' read -r file code; do
  nbad=$((nbad + 1))
  grep -A3 -F "[$file]" "$tmp/bad.out" | grep -q " $code" || { cat "$tmp/bad.out"; fail "$file not reported as $code"; }
done < "$tmp/bad/expected.txt"
grep -q "validated (0 ok, $nbad failed)" "$tmp/bad.out" || { cat "$tmp/bad.out"; fail "not all $nbad bad files failed"; }

# 3. An allow-list entry (code + operationId + path) turns exactly that issue into a pass.
mkdir "$tmp/one" && cp "$tmp/bad/vault-get-location-number.json" "$tmp/one/"
echo '[{"operationId":"Vaults_Get","code":"INVALID_TYPE","path":"$.location","reason":"selftest"}]' > "$tmp/allow.json"
node "$here/validate.js" "$tmp/one" "$tmp/allow.json" | grep -q "1 allowed issues, 0 violations" || fail "allow-list entry did not apply"
echo '[{"operationId":"Vaults_Get","code":"INVALID_TYPE","path":"$.name","reason":"selftest"}]' > "$tmp/allow.json"
if node "$here/validate.js" "$tmp/one" "$tmp/allow.json" > /dev/null; then fail "allow-list entry for another path applied"; fi
echo '[{"code":"INVALID_TYPE","source":"request","path":"$.location","reason":"selftest"}]' > "$tmp/allow.json"
if node "$here/validate.js" "$tmp/one" "$tmp/allow.json" > /dev/null; then fail "request-side allow-list entry applied to a response issue"; fi

# 4. A request-side entry does not hide the same issue in the response.
mkdir "$tmp/echo" && cp "$tmp/bad/vault-put-alwayson-echoed.json" "$tmp/echo/"
echo '[{"code":"ENUM_CASE_MISMATCH","source":"request","path":"$.properties.securitySettings.softDeleteSettings.softDeleteState","reason":"selftest"}]' > "$tmp/allow.json"
node "$here/validate.js" "$tmp/echo" "$tmp/allow.json" > "$tmp/echo.out" || true
grep -q "1 allowed issues, 1 violations" "$tmp/echo.out" || { cat "$tmp/echo.out"; fail "request-side entry hid a response issue"; }

echo "oav selftest passed: $((good_total - 1)) example pairs valid, 1 skipped, $nbad wrong pairs rejected, allow-list ok"
