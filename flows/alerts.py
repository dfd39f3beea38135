"""The nightly deployment's alert: a Prefect automation that reacts when a nightly run fails,
crashes or times out (see :mod:`flows.timeouts`).

With :data:`ALERT_URL_ENV` set when ``wd-pipeline deploy`` runs, the automation sends a
notification through a custom-webhook block posting to that URL (a chat or paging hook).
Without it, the automation does nothing more than fire: its ``prefect.automation.triggered``
event still lands in the event feed of the Prefect UI, beside the failed run. Run as
``python -m flows.alerts`` by :func:`wd_pipeline.ops.deploy.deploy` (the library never
imports Prefect) against the server of ``PREFECT_API_URL``; running it again replaces the
automation and the block, so a redeploy never leaves two.
"""

from __future__ import annotations

import os
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.actions import Action, DoNothing, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

from wd_pipeline.ops.deploy import NIGHTLY

ALERT_URL_ENV = "WD_PIPELINE_ALERT_URL"
AUTOMATION_NAME = f"{NIGHTLY} did not complete"
BLOCK_NAME = "wd-pipeline-nightly-alert"
# A run's state events are named after the state: TimedOut is a Failed type, but its own event.
ENDS = frozenset({"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"})
SUBJECT = "wd-pipeline: nightly run {{ flow_run.name }} ended {{ flow_run.state.name }}"
BODY = (
    "The nightly run {{ flow_run.name }} of {{ deployment.name }} ended in state {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


def nightly_trigger(deployment_id: UUID) -> EventTrigger:
    """Every run of the nightly deployment that ends failed, crashed or timed out, each run on its own."""
    return EventTrigger(
        expect=set(ENDS),
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
    )


def alert_actions(block_id: UUID | None) -> list[Action]:
    """A notification through the block when there is one; else only the automation's own event."""
    if block_id is None:
        return [DoNothing()]
    return [SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)]


def save_webhook(url: str) -> UUID:
    """The webhook block posting ``{"text": subject + body}`` to ``url``; replaced when it exists."""
    block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=url, json_data={"text": "{{subject}}\n{{body}}"})
    return block.save(BLOCK_NAME, overwrite=True)


def install(url: str | None) -> UUID:
    """Create (or replace) the nightly deployment's automation; returns its id."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(NIGHTLY)
        for old in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(old.id)
    block_id = save_webhook(url) if url else None
    automation = Automation(
        name=AUTOMATION_NAME,
        description=f"Reacts to a nightly run that fails, crashes or times out; {what_it_does(url)}",
        trigger=nightly_trigger(deployment.id),
        actions=alert_actions(block_id),
    ).create()
    if automation.id is None:
        raise RuntimeError(f"the Prefect server created automation {AUTOMATION_NAME!r} without an id")
    return automation.id


def what_it_does(url: str | None) -> str:
    return f"posts to the webhook {ALERT_URL_ENV} named" if url else f"records the event only ({ALERT_URL_ENV} unset)"


def main() -> None:
    url = os.environ.get(ALERT_URL_ENV, "").strip() or None
    print(f"Automation {AUTOMATION_NAME!r} ({install(url)}): {what_it_does(url)}")


if __name__ == "__main__":
    main()
