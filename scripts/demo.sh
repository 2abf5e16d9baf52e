#!/usr/bin/env bash
# Sets everything up, then runs the demo: a workspace mounted with two agents,
# a researcher and a writer (started with `agentfs run`), showing a permission
# refusal, a lock that makes the writer wait, the audit trail, and a search.
# Safe to run again: it starts from a fresh demo workspace each time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -n "${AGENTFS_SKIP_SETUP:-}" ] || "$here/scripts/setup.sh"   # tests set it: setup already ran

demo="${AGENTFS_DEMO_DIR:-/tmp/agentfs-demo}"
ws="$demo/workspace"
mnt="$demo/mnt"
step() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }

cleanup_old() {
  if grep -q " $mnt " /proc/self/mounts 2>/dev/null; then agentfs umount "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt"; fi
  if [ -f "$demo/index.pid" ]; then kill "$(cat "$demo/index.pid")" 2>/dev/null || true; fi
  rm -rf "$demo"
}
cleanup_old
mkdir -p "$mnt"

step "1. Create a workspace and its policy"
agentfs init "$ws" >/dev/null
cat > "$ws/agentfs.toml" <<'EOF'
[workspace]
default_agent = "nobody"

[agents.nobody]                 # callers no agent claims: no rights at all
rules = []

[agents.researcher]
rules = [
  { path = "/research/**", allow = "rwcdl" },
  { path = "/drafts/**",   allow = "r" },
]

[agents.writer]
rules = [
  { path = "/research/**", allow = "r" },
  { path = "/drafts/**",   allow = "rwcdl" },
]

[agents.supervisor]
uids = [0]                      # root, who runs this demo, supervises everything
rules = [{ path = "/**", allow = "rwcdl" }]

[locks]
wait_seconds = 10               # a blocked open waits this long, then EAGAIN
EOF
mkdir -p "$ws/data/research" "$ws/data/drafts"
sed -n '1,40p' "$ws/agentfs.toml"
agentfs policy check "$ws"

step "2. Mount it and start the search sidecar"
agentfs mount "$ws" "$mnt"
agentfs index -w "$ws" >"$demo/index.log" 2>&1 &
echo $! > "$demo/index.pid"
cd "$mnt"
researcher() { agentfs run -w "$ws" --agent researcher -- "$@"; }
writer() { agentfs run -w "$ws" --agent writer -- "$@"; }

step "3. The researcher writes notes"
show "researcher: cat .agentfs/whoami"
researcher cat .agentfs/whoami
researcher sh -c 'cat > research/upload-retries.md <<EON
# Upload retries

When an upload to object storage fails, the client retries with exponential
backoff: 1 s, 2 s, 4 s, up to 5 attempts, then marks the job as failed and
alerts on-call. Idempotency keys make a retried upload safe.
EON'
researcher sh -c 'echo "Survey of vector databases: sqlite-vec, pgvector, FAISS." > research/vector-dbs.md'
show "researcher: ls research"
researcher ls research

step "4. A permission refusal: the writer may read research/ but not change it"
show "writer: echo 'edit' >> research/upload-retries.md"
writer sh -c "echo 'edit' >> research/upload-retries.md" || echo "-> refused, as the policy says (writer has only r on /research)"
show "writer: cat research/vector-dbs.md"
writer cat research/vector-dbs.md

step "5. A lock: the researcher locks its notes; the writer waits until it is released"
researcher sh -c '
  setfattr -n user.agentfs.lock -v exclusive research/upload-retries.md
  echo "researcher: locked research/upload-retries.md:"; getfattr -n user.agentfs.lock --only-values research/upload-retries.md; echo
  sleep 3
  setfattr -x user.agentfs.lock research/upload-retries.md
  echo "researcher: released the lock"' &
lock_holder=$!
until researcher getfattr -n user.agentfs.lock research/upload-retries.md >/dev/null 2>&1; do sleep 0.1; done
show "writer: cp research/upload-retries.md drafts/summary.md   (blocks while the lock is held)"
start=$(date +%s.%N)
writer cp research/upload-retries.md drafts/summary.md
end=$(date +%s.%N)
wait "$lock_holder"
printf 'writer: copy done after waiting %.1f s for the lock\n' "$(python3 -c "print($end - $start)")"
show "agentfs locks"
agentfs locks -w "$ws"

step "6. The audit trail: who did what"
show "agentfs audit"
agentfs audit -w "$ws"
show "agentfs audit verify"
agentfs audit verify -w "$ws"

step "7. Search by meaning"
deadline=$((SECONDS + 120))
until agentfs search -w "$ws" "how do we retry failed uploads" --json 2>/dev/null | grep -q upload-retries; do
  if [ $SECONDS -gt $deadline ]; then echo "search did not find the notes in time; see $demo/index.log"; break; fi
  sleep 0.5
done
show "agentfs search \"how do we retry failed uploads\""
agentfs search -w "$ws" "how do we retry failed uploads" --k 3
show "writer: ls \".search/how do we retry failed uploads/\""
writer ls -l ".search/how do we retry failed uploads/"
show "writer: cat \".search/how do we retry failed uploads/results.md\""
writer cat ".search/how do we retry failed uploads/results.md"

cd /
step "Done"
cat <<EOF
The workspace stays mounted at $mnt (sidecar pid $(cat "$demo/index.pid")). Try:
  cd $mnt && agentfs run -w $ws --agent writer -- bash
  agentfs audit -w $ws --follow
When finished:  agentfs umount $mnt && kill $(cat "$demo/index.pid")
EOF
