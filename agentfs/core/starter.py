"""The policy file `agentfs init` writes: safe by default, every key explained."""

STARTER_POLICY_TEXT = '''\
# agentfs policy: who may do what in this workspace.
#
# Paths are relative to the workspace's data tree, as seen on the mount:
# "/" is the mount's top, "/research/notes.md" a file in it.
# Default deny: an agent may do only what a rule below allows it. Deny rules
# beat allow rules; the rights of all matching allow rules add up.
# Rights are letters:  r  read and list      w  change existing content/metadata
#                      c  create              d  delete or rename away
#                      l  lock
# Globs: *  any characters within one path segment (never "/")
#        ** a whole segment: zero or more segments ("/a/**" is /a and all below)
#        ?  one character    [abc] [a-z] [!abc]  one character of a class
# A path an agent may not read is invisible to it; the folders above what it
# may use are visible, listing only what it may see. Unix permissions still
# apply beneath the policy: agentfs only takes rights away.
# Changes to this file take effect without remounting; a broken edit is
# refused (the daemon logs file:line) and the last good policy stays.
# Check it with:  agentfs policy check
# Ask it with:    agentfs policy explain --agent NAME /some/path

[workspace]
# The agent of any caller that no agent below claims (by uid or by
# `agentfs run --agent NAME`). "nobody" has no rules, so unknown callers
# see an empty mount and can change nothing.
default_agent = "nobody"

# One table per agent: [agents.NAME]. Names use letters, digits, _ - .
[agents.nobody]
# uids: Unix users whose processes are this agent (strong isolation: the
# kernel vouches for the uid). A uid belongs to at most one agent. An agent
# without uids is used through `agentfs run --agent NAME -- COMMAND`, or
# through a mount dedicated to it: `agentfs mount WS MNT --agent NAME`.
uids = []
# rules: a list of { path = GLOB, allow = "LETTERS" } or
# { path = GLOB, deny = "LETTERS" }. No rules: no rights at all.
rules = []

# A supervisor with every right everywhere (replace 1000 with your uid):
# [agents.supervisor]
# uids = [1000]
# rules = [{ path = "/**", allow = "rwcdl" }]

# A researcher that owns /research and reads /data:
# [agents.researcher]
# uids = [2001]
# rules = [
#   { path = "/research/**", allow = "rwcdl" },
#   { path = "/data/**",     allow = "r" },
# ]

# A writer started with `agentfs run --agent writer -- COMMAND`, who reads
# the research, owns /drafts, and cannot see /drafts/secret at all:
# [agents.writer]
# rules = [
#   { path = "/research/**",      allow = "r" },
#   { path = "/drafts/**",        allow = "rwcdl" },
#   { path = "/drafts/secret/**", deny = "rwcdl" },
# ]

[mount]
# Seconds the kernel may cache names and attributes of paths that every
# agent sees alike (paths seen differently are never cached). Higher is
# faster; changes made beside the mount show up after at most this long.
cache_seconds = 60
# How large writes through write-only handles (dd, cp, tar) reach the disk:
# "behind" writes each back at once and drops what is 8 MiB behind, so a
# stream keeps little page cache (plain page cache while the disk is slower
# than 256 MiB/s); "direct" bypasses the page cache (O_DIRECT); "cache"
# leaves them to the page cache. (`direct_writes`, its old name, still works.)
stream_writes = "behind"
# Large block-aligned reads through read-only handles (dd, cp, a program
# streaming a big file) come from disk directly (O_DIRECT), leaving no second
# copy in the page cache: "auto" while the disk serves them at 256 MiB/s or
# more, "always", or "never".
direct_reads = "auto"

[locks]
# Lease of a lock taken without --ttl, in seconds; it expires unless renewed.
default_ttl = 300
# How long an open blocked by another agent's lock waits before EAGAIN.
wait_seconds = 5

[audit]
# Also record reads (opens for reading), not only changes and denials.
reads = false
# "process": a change is acknowledged once its record would survive the
# daemon being killed (journaled in the page cache); "power": also a power
# cut (each group commit is fsynced; slower on every change).
durability = "process"
# Retention: archive the oldest records to compressed JSON lines under
# state/audit-archive/ (their chain still verifies) beyond this many live
# records (0: no limit)...
retention_records = 0
# ...or once they are older than this many days (0: never).
retention_days = 0

[audit.runaway]
# An agent stuck in a loop: more than this many changes in the sliding
# window writes a "runaway" record and a warning in the daemon's log
# (0 turns a threshold off). Override per agent in [agents.NAME.runaway].
# Changes to one path: opens for writing, truncates, attribute changes,
# renames onto it.
writes_per_file_per_minute = 120
# Files, directories and links created.
new_files_per_minute = 1000
# Changes of any kind.
ops_per_minute = 0
# "alert" records and logs; "deny" also refuses every change by that agent
# for cooloff_seconds.
action = "alert"
# How long an agent stays refused after crossing a threshold under "deny".
cooloff_seconds = 60
# The sliding window the thresholds count in, in seconds.
window_seconds = 60

[search]
# The embedding model of the search index ("minilm": all-MiniLM-L6-v2).
embedder = "minilm"
'''
