"""Where the real DigitalOcean API is unkind, and the words it uses; each behaviour is off until a test
turns it on.

    fakedo.serve(token, quirks=Quirks(destroy_polls=3, create_failure="errored"))
    fake.state.quirks.hourly_limit = 5            # on a running fake

Off by default so that today's client tests keep seeing a patient API; a client that has learned a behaviour
turns it on in its own tests. Every message below is the real API's wording as public reports quote it (read
2026-12-07); where no report quotes one, the comment says so and what stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# 422 for a droplet that already has an event in flight: DigitalOcean serialises a droplet's events, and a
# second one is refused with this text. https://github.com/hashicorp/packer/issues/1814 (2015-01-05) and
# https://github.com/hashicorp/packer/issues/1786 (2014-12-19) quote it; DigitalOcean's own CSI driver matches
# on it (github.com/digitalocean/csi-digitalocean, driver/controller.go). No public report quotes the answer
# to a second DELETE of a droplet whose destroy is under way; a destroy is such an event, so the fake answers
# with this.
PENDING_EVENT = "Droplet already has a pending event."

# 422s on create that mean "not here", as the API words them:
# https://github.com/digitalocean/api-v2/issues/41 (2014-07-02) and
# https://github.com/renproject/darknode-cli/issues/5 (2018-08-22): region closed to new droplets.
REGION_UNAVAILABLE = "Region is not available"
# https://github.com/OpenRouterLabs/spawn/pull/2768 (2026-03-18, with the whole body) and
# https://github.com/ChainSafe/forest-iac/pull/437 (2024-04-18).
SIZE_UNAVAILABLE = "Size is not available in this region."
# https://github.com/digitalocean/api-v2/issues/36 (2014-06-28; the "Size " prefix it reports was dropped
# then): a size the account may not create yet, and an image that is not in the region asked for.
SIZE_RESTRICTED = "This size is currently restricted please send an additional payment to unlock."
IMAGE_NOT_IN_REGION = ("The image you specified is not available in the selected region, you can transfer it "
                       "to this region from the images pages.")

# 403 for a custom-scoped token that lacks a scope. The real message does not name the scope:
# https://github.com/ansible-collections/community.digitalocean/issues/375 (2024-06-30, a droplet-only token
# creating a droplet with ssh_keys) quotes this text; https://github.com/digitalocean/action-doctl/issues/83
# (2024-07-04) quotes "you do not have access for the attempted action" for another endpoint. No public source
# shows a message of the form "You are missing the required permission droplet:create." A client that wants to
# name the missing scope must know each operation's scopes itself: `fakedo.required_scopes()` gives the
# spec's.
NOT_AUTHORIZED = "You are not authorized to perform this operation."

# The spec's own sample (specification/description.yml, "Sample Rate Exceeded Response").
RATE_LIMITED = "API Rate limit exceeded."

# A create whose action ends `errored`:
# https://github.com/ansible-collections/community.digitalocean/issues/150 (2021-08-31), "Droplet create event
# failed", the droplet then not found by the client.
CreateFailure = Literal["errored", "stuck"]


@dataclass
class Quirks:
    """The switches. Each field's comment says what the real API does and what the fake then does."""

    # Asynchronous destroy. DELETE /v2/droplets/{id} answers 204 at once, but the droplet stays listed (by id,
    # by tag, by type) for a while: "we have to wait 3-4 sec for the droplet to be deleted for real"
    # (https://github.com/digitalocean/godo/issues/146, 2017-07-07), and the Terraform provider polls after a
    # delete while the status is `active` or `off`, until a 404
    # (https://github.com/digitalocean/terraform-provider-digitalocean/pull/284, 2019-08-21; a DigitalOcean
    # engineer there: `archive` "will not be seen on the public API as it will 404"). With either switch set
    # the droplet shows status `off`, locked, for `destroy_polls` looks and at least `destroy_seconds`, then
    # 404s; a second DELETE meanwhile gets 422 PENDING_EVENT. Its machine (sshd) stops at the DELETE.
    destroy_polls: int = 0
    destroy_seconds: float = 0.0

    # A create accepted (202) and then failing: "errored" -> the create action ends `errored` when the droplet
    # would have turned active and the droplet stays `new` (no addresses, no machine) until deleted; "stuck"
    # -> the droplet stays `new` and its action `in-progress` for ever.
    create_failure: CreateFailure | None = None

    # 422s that mean "not here": a region closed to new droplets (also shown `available: false` in
    # /v2/regions), a size this account may not create, an (image slug, region) pair where the image is not.
    # (A size not offered in a region is always refused, and `State.unavailable` holds (size, region) pairs
    # out of stock.)
    closed_regions: set[str] = field(default_factory=set)
    restricted_sizes: set[str] = field(default_factory=set)
    image_unavailable: set[tuple[str, str]] = field(default_factory=set)

    # Rate limits (specification/description.yml, "Rate Limit"). Requests are counted per token over a sliding
    # hour either way (the ratelimit-* headers); with `hourly_limit` set, that is the limit, shown in
    # ratelimit-limit and enforced: once spent, every request gets 429 with ratelimit-remaining 0 and NO
    # retry-after (the spec promises retry-after only for the burst limit). `burst_limit` is the per-minute
    # limit (250 on the real API): 429 with retry-after. `ssh_key_list_limit` is the spec's special limit on
    # GET /v2/account/keys ("Only 10 ... per 60 seconds"): 429 without retry-after, as the spec promises none
    # for it either.
    hourly_limit: int | None = None
    burst_limit: int | None = None
    ssh_key_list_limit: int | None = None
    ssh_key_list_window_s: float = 60.0
