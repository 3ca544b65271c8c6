"""The admin change log over HTTP."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from referral.admin.review import (
    DEFAULT_STALE_DAYS,
    ReviewItemSchema,
    ReviewQueryArgsSchema,
    review_queue,
    routing_items,
)
from referral.admin.schemas import AdminChangeSchema, AuditQueryArgsSchema
from referral.admin.service import ChangeFilters, list_changes
from referral.auth.keys import BEARER_SECURITY, authenticate, require_scope
from referral.auth.models import SCOPE_ADMIN
from referral.db import get_session
from referral.referrals.log import needing_routing
from referral.web.api import Blueprint, problems

admin_blp = Blueprint(
    "admin", __name__, url_prefix="/v1/admin", description="Directory administration (admin)."
)


@admin_blp.before_request
def admins_only() -> None:
    require_scope(authenticate(), SCOPE_ADMIN)


@admin_blp.route("/audit")
class AdminAudit(MethodView):
    @admin_blp.doc(security=BEARER_SECURITY)
    @admin_blp.arguments(AuditQueryArgsSchema, location="query")
    @admin_blp.response(200, AdminChangeSchema(many=True))
    @problems(admin_blp, 401, 403)
    @admin_blp.paginate(page_size=50, max_page_size=200)
    def get(self, args: dict[str, Any], pagination_parameters: Any) -> Any:
        """Every directory change, newest first: who, when, and {field: [before, after]}."""
        changes, total = list_changes(
            get_session(),
            ChangeFilters(
                clinic_id=args.get("clinic_id"), since=args.get("since"), until=args.get("until")
            ),
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return changes


@admin_blp.route("/review")
class AdminReview(MethodView):
    @admin_blp.doc(security=BEARER_SECURITY)
    @admin_blp.arguments(ReviewQueryArgsSchema, location="query")
    @admin_blp.response(200, ReviewItemSchema(many=True))
    @admin_blp.paginate(page_size=50, max_page_size=200)
    def get(self, args: dict[str, Any], pagination_parameters: Any) -> Any:
        """The review queue: records a person should look at, each with its `reasons`.

        Referrals no clinic was within reach of (status `needs_routing`, most urgent
        first), unknown names or phones, locations geocoded only to a city (or not at all),
        active clinics sharing one phone (one item listing them), records flagged for review,
        clinics with no specialty on record either way, and records not updated for
        `REVIEW_STALE_DAYS` (default 365) days."""
        session = get_session()
        items = review_queue(
            session,
            stale_days=float(current_app.config.get("REVIEW_STALE_DAYS", DEFAULT_STALE_DAYS)),
            codes=args.get("reason", []),
            extra=routing_items(needing_routing(session)),
        )
        pagination_parameters.item_count = len(items)
        first = pagination_parameters.first_item
        return items[first : first + pagination_parameters.page_size]
