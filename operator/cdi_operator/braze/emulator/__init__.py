"""A Braze REST API emulator (`/users/track`, `/users/delete`, catalogs) with fault injection for tests, benchmarks,
`cdi demo`.

It follows BRAZE-API.md and validates every object with its own rules, written apart from the runner's validator so
that a test passing against it means something. Three ways to run it:

- in a thread: `with BrazeEmulator(api_key="k") as emu:` serves on 127.0.0.1 at a free port, `emu.url`; the
  accessors (`tracked()`, `deleted()`, `profiles`, `status_counts`, `inject()`, ...) are thread-safe;
- in the running event loop: `await emu.start_async()` ... `await emu.stop_async()`;
- as a process: `python -m cdi_operator.braze.emulator --port 0 --api-key K` prints
  `Braze emulator listening on http://127.0.0.1:PORT` and serves until SIGTERM/SIGINT. Subprocess users drive it
  through `GET /_emulator/state`, `POST /_emulator/faults` and `POST /_emulator/reset` (no auth: loopback only).

Decisions where BRAZE-API.md is silent:

- Identifier: at most one of `external_id`, `user_alias`, `braze_id`; without any of them `email`, else `phone`
  identifies the user (email wins). Next to a stronger identifier, `email` / `phone` are plain profile attributes.
- Profiles (`emu.profiles`) are keyed by the external id itself, and otherwise by `alias:<label>:<name>`,
  `braze_id:<id>`, `email:<address>`, `phone:<number>`. As in Braze, an alias / email / phone object creates
  the profile only with `"_update_existing_only": false`, and a `braze_id` object only updates an existing profile
  (seed one with `add_profile()`); the object is accepted either way. Only attributes are kept in a profile: `null`
  removes one, `_merge_objects: true` deep-merges object values, anything else replaces the value.
- `"_update_existing_only": true` on an attributes object for a user the emulator does not know (an external id
  too) applies it to no profile: the object is accepted and kept in `skipped`, as Braze skips such rows.
- Catalogs exist when a test creates them (`create_catalog(name, fields, items)`, or `POST /_emulator/catalogs`
  `{"name", "fields": {name: type}, "items": [...]}`, `{"name", "delete": true}`, `{"storage_limit": n}`), with Braze's
  field types (string, number, boolean, time, array, object). `GET /catalogs` lists them (5 a minute by default,
  the stricter of Braze's pages); `PUT` / `DELETE /catalogs/{name}/items` answer 202 `{"message": "success"}`,
  or refuse the whole request: 404 `catalog-not-found`, or 400 with Braze's `errors` (`items-missing-ids`,
  `ids-not-strings`, `ids-too-large`, `invalid-ids`, `ids-not-unique`, `invalid-fields`,
  `invalid-keys-in-value-object`, `items-too-large`, `too-deep-nesting-in-value-object`, `unable-to-coerce-value`,
  `item-array-invalid`, `request-includes-too-many-items`). Items are checked against the catalog's fields (`null`
  fits any type). `catalog_storage_limit` caps the items all catalogs hold together: a PUT beyond it is a 400 with
  the id `out_of_space_error_id` (default `catalog-out-of-space`; Braze does not document its id). The item
  endpoints share one window of 16,000 requests a minute, and take the faults as `/users/*` do.
  `catalog_items(name)` is what a catalog holds.
- Events and purchases are strict: a top-level key that is not a field of the object is an error. Purchases need
  `time` as the REST API says (the table's default to UPDATED_AT is the runner's job).
- Rate limits use fixed windows aligned to multiples of the window length since the epoch, so
  `X-RateLimit-Reset` (rounded up to a whole second) is where the window really ends when windows are whole seconds.
  Every request to an endpoint counts, including the ones refused, in the window it arrives in: the latency
  (`latency`, `--latency`, which stands for Braze's work and the way back) comes after, so a request that arrives
  just before a reset spends the old window and its answer's headers say so, as with Braze's limiter in front of its
  API. `requests()` and `GET /_emulator/state`'s `first_request_at` / `last_request_at` give arrival times. There
  is one limiter per API key and endpoint family, across all connections, as Braze keeps them per workspace:
  `/users/track`; `/users/delete` together with `/users/alias/new`, `/users/identify` and `/users/merge` (which the
  emulator counts and answers 201, applying nothing); the catalog item endpoints; `GET /catalogs`.
  `other_api_keys` are further workspaces (their own limiters; the objects are kept together). A request with an
  unknown key is a 401 and counts nowhere.
  `window_counts(family, api_key)` (and `rate_windows` in `GET /_emulator/state`) gives the requests each of the
  last windows counted, which is what the tests of the shared budget check.
- Faults are consumed in arrival order by `/users/*` and catalog item requests, queued ones first, then the random
  mode. Kinds: `http500`, `http502`, `http503`, `http429` (nothing applied), `slow` (waits, then handles the request
  normally: a client that timed out meanwhile still gets its objects applied), `drop` (reads the body, closes the
  connection without a response, nothing applied), `drop_after` (applies the request, then closes the connection:
  delivered, ack lost), `queued` (202 `{"message": "queued"}`, objects applied). `status_counts` counts a closed
  connection under 0.
"""

from cdi_operator.braze.emulator.cli import main
from cdi_operator.braze.emulator.faults import FAULT_KINDS
from cdi_operator.braze.emulator.server import BrazeEmulator
from cdi_operator.braze.emulator.state import RequestRecord

__all__ = ["FAULT_KINDS", "BrazeEmulator", "RequestRecord", "main"]
