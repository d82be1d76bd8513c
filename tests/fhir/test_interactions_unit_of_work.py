"""Interactions inside a caller's transaction (UnitOfWork), and the one-shot wrappers' guard."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.fhir.interactions import UnitOfWork
from app.fhir.outcome import BadRequest
from app.store.versions import WriteBatch
from tests.fhir.test_bundle_env import Env, env, mongo, patient

__all__ = ["env", "mongo"]


async def test_writes_in_one_unit_of_work_commit_together(env: Env) -> None:
    ix = env.interactions
    existing = await ix.create("Patient", patient())
    assert existing.version
    pid = existing.version.id
    first = ix.prepare("Patient", patient())
    changed = ix.prepare_update("Patient", pid, patient(id=pid, gender="male"))

    async def work(session: Any) -> None:
        uow = UnitOfWork(session, WriteBatch(env.store), raw=["raw-1"])
        await ix.create_in(uow, "Patient", first, resource_id="made-in-uow")
        await ix.update_in(uow, "Patient", pid, changed)
        await uow.flush()

    await env.store.run_transaction(work)
    assert (await ix.read("Patient", "made-in-uow")).vid == 1
    assert (await ix.read("Patient", pid)).vid == 2
    doc = await env.store.read_current("Patient", "made-in-uow")
    assert doc is not None
    raw = await env.store.current("Patient").find_one({"_id": "made-in-uow"})
    assert raw is not None and raw["raw"] == ["raw-1"]


async def test_a_failing_unit_of_work_writes_nothing(env: Env) -> None:
    ix = env.interactions
    body = ix.prepare("Patient", patient())

    async def work(session: Any) -> None:
        uow = UnitOfWork(session, WriteBatch(env.store))
        await ix.create_in(uow, "Patient", body, resource_id="never")
        await uow.flush()
        raise BadRequest("the caller gives up after flushing")

    with pytest.raises(BadRequest):
        await env.store.run_transaction(work)
    assert await env.store.read_current("Patient", "never") is None
    assert await env.history_count() == 0


async def test_concurrent_one_shot_conditional_creates_make_one_resource(env: Env) -> None:
    criteria = [("identifier", "urn:test:mrn|one-shot")]
    results = await asyncio.gather(
        *(
            env.interactions.create("Patient", patient("one-shot"), if_none_exist=criteria)
            for _ in range(10)
        )
    )
    assert sorted(r.status for r in results) == [200] * 9 + [201]
    assert len({r.version.id for r in results if r.version}) == 1
    assert await env.count("Patient") == 1
