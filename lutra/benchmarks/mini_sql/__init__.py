"""mini_sql: the embedded text-to-SQL benchmark, generated deterministically from a seed (no download).

Why it exists: the default run trains a ~4M-parameter Llama built locally, so the benchmark must be small, fast
to execute and learnable by such a model, while keeping the structure of Spider: SQLite databases, schema-only
prompts made of CREATE TABLE statements, gold queries compared by execution.

Databases. Five domains (music, school, shop, library, hospital), 3-4 tables each with primary and foreign
keys and 20-80 rows of realistic values (names, cities, years, prices) drawn from fixed word lists by a
`random.Random` seeded with `subsample_seed`. Each is written atomically (temp file + `os.replace`) under
`data_dir` (default `outputs/data/mini_sql/<fingerprint>/`) and reused when its `PRAGMA user_version` matches the
fingerprint (generator version + seed); an explicit `data_dir` holds one seed at a time (another seed rebuilds
the files). `hospital` is held out: it has its own split, `held_out` (100 problems, every template), and never
appears in `eval`, `train` or `warmup`, so transfer to an unseen schema is measured and reported separately
(benchmark.held_out_split) and does not dilute eval's EX. Until generator version 3 the hospital problems were 18%
of `eval`; no method ever solved one (a 3M model trained on four schemas does not read a fifth), so they capped eval
at 82% and shrank every difference by 18%.

Templates. Fifteen question templates (`TEMPLATES`) cover projection with WHERE on a text value, numeric
comparisons, BETWEEN, AND, COUNT, AVG/MAX/MIN/SUM, DISTINCT, GROUP BY, HAVING, ORDER BY ... LIMIT, JOIN with a
filter, JOIN + GROUP BY and nested IN / NOT IN / AVG subqueries. They are schema-driven: every table declares
its name, category (text) and numeric columns and its foreign keys, so every template instantiates on every
domain. Each has 3-4 paraphrased wordings and exactly one canonical SQL style (uppercase keywords, single spaces,
`T1`/`T2` aliases in joins). Values are copied verbatim: `... whose country is "France"` -> `country = 'France'`,
`... greater than 30` -> `age > 30`. Slot values are drawn from the database rows and every gold is executed at
generation: it returns 1-300 rows, no all-NULL row, no zero count, no tie within or at a LIMIT. Tiers follow
Spider's hardness (easy / medium / hard / extra) by the number of SQL components.

Rare templates. Five templates (BETWEEN, DISTINCT, AND, nested AVG, NOT IN) are flagged rare. This module does not
filter; the tiny model's builder gives each rare template only a fraction of a common template's share of the warm
start (`model.tiny.rare_templates_keep`). That mirrors the paper's regime: a base that has seen SQL syntax, schema
reading and value copying, but is weak on some of the target task's own patterns, so preference refinement on
`train` has something to learn, visible per template and tier in eval. The five are each one step from common
templates (a new keyword, a second condition, NOT before IN), so sampling writes them "now and then" and the loop
can learn them. Until tiny recipe 6 the set was HAVING, ORDER BY ... LIMIT, JOIN + GROUP BY, nested AVG, NOT IN:
there JOIN + GROUP BY stayed at ~20% for every method (ground truth included), and bases that wrote `ASC` for
"highest" or `>` for "at least" rarely sampled the other (no correct sample in 8 on 24 of 40 ORDER BY ... LIMIT
training problems), so many of those problems gave no pairs.

Splits. `eval` (500) is generated first, then `held_out` (100, the hospital database only), `train` (600), then
`warmup` (`n_warmup`, 16,000 in conf/benchmark/mini_sql.yaml), each cycling over templates x domains so templates
appear in equal proportion. A
problem's key (template, db_id, slot values) and its question text are never reused, so the splits are disjoint and
eval asks only unseen combinations. eval and train do not depend on `n_warmup`. A template x domain whose
combinations run out (in warmup: where_eq, HAVING, nested AVG, ORDER BY ... LIMIT) passes its turn to the others.
Options (benchmark.options): `n_train_pool` (600), `n_eval_pool` (500), `n_held_out_pool` (100),
`rare_templates` (default: the five above; which templates the tiny model's warm start keeps rare; the questions
drawn do not change).

Modules: `schema` (domains, tables, columns), `databases` (SQLite files and value checks), `templates`
(single-table questions) and `catalog` (joins, nested queries, `TEMPLATES`), `splits` (drawing the splits, `load`,
`user_message`). This package re-exports the benchmark interface and the names the tiny model's cache key reads
(`GENERATOR_VERSION`, `RARE_TEMPLATES`).
"""

from lutra.benchmarks.mini_sql.catalog import RARE_TEMPLATES, TEMPLATES, Template
from lutra.benchmarks.mini_sql.databases import GENERATOR_VERSION, MAX_ROWS, fingerprint
from lutra.benchmarks.mini_sql.schema import DOMAINS, Col, Domain, Table
from lutra.benchmarks.mini_sql.splits import (
    _GENERATORS,
    ATTEMPTS,
    INSTRUCTION,
    N_EVAL_POOL,
    N_HELD_OUT_POOL,
    N_TRAIN_POOL,
    OPTIONS,
    SPLITS,
    load,
    user_message,
)
from lutra.benchmarks.mini_sql.templates import Draft

__all__ = ["ATTEMPTS", "DOMAINS", "GENERATOR_VERSION", "INSTRUCTION", "MAX_ROWS", "N_EVAL_POOL", "N_HELD_OUT_POOL",
           "N_TRAIN_POOL", "OPTIONS", "RARE_TEMPLATES", "SPLITS", "TEMPLATES", "_GENERATORS", "Col", "Domain", "Draft",
           "Table", "Template", "fingerprint", "load", "user_message"]
