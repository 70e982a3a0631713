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

# Volumes (tests/fakedo/volumes.py). Each wording as public reports quote it:
# 409 on create with a name the region already has: https://github.com/hashicorp/terraform/issues/8023
# (2016-08-06); the spec itself: "You can only create one volume per region with the same name."
VOLUME_NAME_TAKEN = "already exists"
# 422 on create in a region without block storage: https://github.com/thecodeteam/libstorage/issues/429 (2017-02-22).
STORAGE_NOT_IN_REGION = "Storage is not supported for this region"
# 409 on delete while attached: https://github.com/digitalocean/terraform-provider-digitalocean/issues/27
# (2017-07-28) and pull/22 (2017-07-04); https://github.com/digitalocean/csi-digitalocean/issues/32 (2018-08-23).
VOLUME_ATTACHED = "A volume that's attached to a Droplet cannot be deleted. Please detach it first before deleting."
# 422 on attach when it already is: DigitalOcean's CSI driver matches this prefix (csi-digitalocean,
# driver/controller.go, ControllerPublishVolume). The rest of the sentence no source quotes.
ALREADY_ATTACHED = "This volume is already attached"
# 404 on detach from a droplet it is not attached to: https://github.com/kubernetes/kops/pull/11963 (2021-07-09);
# older answers were 422 "Attachment not found" (https://github.com/digitalocean/doctl/issues/207, 2017-04-04; the
# CSI driver still matches both). The fake gives the newer one.
NOT_ATTACHED = "error detaching volume from droplet: volume is not attached to droplet"
# No public report quotes these; the rules are documented, the words stand in: a volume attaches only to a droplet
# in its own region ("moved between Droplets within a specific region", the spec's Block Storage tag), at most 15
# volumes per droplet (volumeActions_post_byId.yml; digitalocean/openapi pull 902, 2024-08-12), 1 GiB to 16 TiB
# (the same file), names of lowercase letters, digits and '-' starting with a letter (volume_base.yml), and the
# account's volume limit (godo's Account.VolumeLimit, which the CSI driver checks before creating).
WRONG_REGION = "Volume and Droplet must be in the same region"
TOO_MANY_VOLUMES = "Droplet already has the maximum number of volumes attached (15)"
VOLUME_SIZE = "size_gigabytes must be between 1 and 16384"
VOLUME_NAME = "name must be lowercase letters, numbers and '-', start with a letter, at most 64 characters"
VOLUME_LIMIT = "creating this volume would exceed your volume limit"

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
    # Regions whose volume creates are refused (STORAGE_NOT_IN_REGION). (With `destroy_polls`/`destroy_seconds`,
    # a destroyed droplet's volumes also stay attached until its destroy is done, as
    # https://github.com/digitalocean/godo/issues/146 (2017-07-07) reports: the volume's DELETE right after the
    # droplet's got 409 for 3-4 s; a detach meanwhile gets 422 PENDING_EVENT.)
    no_storage_regions: set[str] = field(default_factory=set)

    hourly_limit: int | None = None
    burst_limit: int | None = None
    ssh_key_list_limit: int | None = None
    ssh_key_list_window_s: float = 60.0
