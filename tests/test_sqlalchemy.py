"""SQLAlchemy 2 (ORM and Core) through pgml-server, with the psycopg and the asyncpg dialects.

Both dialects introspect the server on connect (version(), standard_conforming_strings, the
type catalogue for asyncpg's codecs), create tables with metadata.create_all (catalogue queries
with bound parameters, then DDL), insert and query through the ORM, and roll back. A call of a
local function, `select(func.pgml.version())`, goes through the same statement cache.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import ForeignKey, String, create_engine, func, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship  # noqa: E402

from pgml_server import __version__  # noqa: E402


def make_models(suffix: str):
    """Fresh table names per test, so the dialect tests can share the upstream database."""

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = f"sa_author_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50), unique=True)
        books: Mapped[list["Book"]] = relationship(back_populates="author", order_by="Book.id")

    class Book(Base):
        __tablename__ = f"sa_book_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        score: Mapped[float | None]
        author_id: Mapped[int] = mapped_column(ForeignKey(f"{Author.__tablename__}.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    return Base, Author, Book


def url(server, driver: str) -> str:
    return f"postgresql+{driver}://postgres@{server.host}:{server.port}/postgres"


def test_psycopg_dialect_orm(server):
    pytest.importorskip("psycopg")
    Base, Author, Book = make_models(uuid.uuid4().hex[:8])
    engine = create_engine(url(server, "psycopg"))
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add(Author(name="ada", books=[Book(title="notes", score=1.5), Book(title="letters")]))
            s.commit()
            ada = s.scalars(select(Author).where(Author.name == "ada")).one()
            assert [b.title for b in ada.books] == ["notes", "letters"]
            assert s.scalar(select(func.count()).select_from(Book).where(Book.score.is_(None))) == 1

            # A rolled-back insert is absent afterwards.
            s.add(Author(name="bob"))
            s.flush()
            assert s.scalar(select(func.count()).select_from(Author)) == 2
            s.rollback()
            assert s.scalars(select(Author.name).order_by(Author.name)).all() == ["ada"]

            # A local function inside the ORM session, in and out of a transaction.
            assert s.scalar(select(func.pgml.version())) == __version__
            s.commit()
            assert s.execute(select(func.pgml.version().label("v"))).one().v == __version__
            # The same statement again (psycopg's prepared-statement threshold is 5 executions).
            for _ in range(6):
                assert s.scalar(select(func.pgml.version())) == __version__
                assert s.scalar(select(func.count()).select_from(Book).where(Book.title == "notes")) == 1
        # Metadata reflection (catalogue queries with parameters) works through the server too.
        insp = sqlalchemy.inspect(engine)
        assert Book.__tablename__ in insp.get_table_names()
        assert {c["name"] for c in insp.get_columns(Book.__tablename__)} == {"id", "title", "score", "author_id"}
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_asyncpg_dialect_orm(server):
    pytest.importorskip("asyncpg")
    pytest.importorskip("greenlet")   # SQLAlchemy's asyncio layer needs it
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    Base, Author, Book = make_models(uuid.uuid4().hex[:8])

    async def main() -> None:
        engine = create_async_engine(url(server, "asyncpg"))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine, expire_on_commit=False) as s:
                s.add_all([Author(name="ada", books=[Book(title="notes", score=2.0)]),
                           Author(name="cy", books=[Book(title="poems", score=3.0)])])
                await s.commit()
                rows = (await s.execute(
                    select(Author.name, func.sum(Book.score)).join(Book).group_by(Author.name)
                    .order_by(Author.name))).all()
                assert [tuple(r) for r in rows] == [("ada", 2.0), ("cy", 3.0)]

                s.add(Author(name="bob"))
                await s.flush()
                assert await s.scalar(select(func.count()).select_from(Author)) == 3
                await s.rollback()
                names = (await s.scalars(select(Author.name).order_by(Author.name))).all()
                assert names == ["ada", "cy"]

                # asyncpg prepares every statement: the local function is prepared, described and run.
                for _ in range(3):
                    assert await s.scalar(select(func.pgml.version())) == __version__
                await s.commit()
            # A rollback of a whole engine-level transaction, on a fresh pooled connection.
            async with engine.connect() as conn:
                trans = await conn.begin()
                await conn.execute(Author.__table__.insert().values(name="dee"))
                assert await conn.scalar(select(func.count()).select_from(Author)) == 3
                assert await conn.scalar(select(func.pgml.version())) == __version__
                await trans.rollback()
                assert await conn.scalar(select(func.count()).select_from(Author)) == 2
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()

    asyncio.run(main())
