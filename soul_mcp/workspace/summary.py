"""What an import or an export did (or, in a dry run, would do): the summaries and their text."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from soul_mcp.names import DocumentName


class DocumentImport(BaseModel):
    document: DocumentName
    file: str
    action: Literal["updated", "unchanged", "skipped"] = Field(description="in a dry run: what would happen")
    version: int | None = Field(default=None, description="the version now current (None in a dry run)")
    note: str | None = Field(default=None, description="why it was skipped or left unchanged")


class FileImport(BaseModel):
    file: str
    memories: int = Field(description="memories found in the file")
    added: int
    duplicates: int = Field(description="already stored, or repeated in the workspace")
    forgotten: int = Field(description="skipped: the same content was forgotten or revised before")


class ImportSummary(BaseModel):
    directory: str
    dry_run: bool
    documents: list[DocumentImport]
    files: list[FileImport]
    documents_updated: int
    memories_added: int
    memories_duplicate: int
    memories_forgotten: int
    not_imported: list[str] = Field(description="files left out, each with the reason")


class ExportFile(BaseModel):
    file: str
    action: Literal["created", "replaced", "unchanged"] = Field(description="in a dry run: what would happen")
    memories: int | None = Field(default=None, description="memories in the file (None for a document)")


class ExportSummary(BaseModel):
    directory: str
    dry_run: bool
    files: list[ExportFile]
    documents: int
    memories: int
    left_alone: list[str] = Field(
        description="workspace files already in the folder that this export did not write"
    )
    notes: list[str] = Field(description="what was not exported, and why")


def render_import(summary: ImportSummary) -> str:
    would = summary.dry_run
    lines = [
        f"Dry run: nothing was written. Importing {summary.directory} would do this:"
        if would
        else f"Imported {summary.directory}:"
    ]
    verbs = {
        "updated": "would be updated" if would else "updated",
        "unchanged": "unchanged",
        "skipped": "skipped",
    }
    for d in summary.documents:
        text = f"  {d.file} -> {d.document}: {verbs[d.action]}"
        if d.action == "updated" and d.version is not None:
            text += f" (now version {d.version})"
        lines.append(text + (f" ({d.note})" if d.note else ""))
    for f in summary.files:
        parts = [f"{f.added} {'to add' if would else 'added'}"]
        if f.duplicates:
            parts.append(f"{f.duplicates} already stored")
        if f.forgotten:
            parts.append(f"{f.forgotten} forgotten before")
        lines.append(
            f"  {f.file}: {f.memories} memor{'y' if f.memories == 1 else 'ies'}, " + ", ".join(parts)
        )
    if summary.not_imported:
        lines.append("Not imported: " + "; ".join(summary.not_imported))
    lines.append(
        f"{'Would update' if would else 'Updated'} {summary.documents_updated} "
        f"document{'s' if summary.documents_updated != 1 else ''}, "
        f"{'would add' if would else 'added'} {summary.memories_added} "
        f"memor{'y' if summary.memories_added == 1 else 'ies'}; skipped {summary.memories_duplicate} "
        f"as duplicates and {summary.memories_forgotten} as forgotten before."
    )
    return "\n".join(lines)


def render_export(summary: ExportSummary) -> str:
    would = summary.dry_run
    lines = [
        f"Dry run: nothing was written. Exporting to {summary.directory} would do this:"
        if would
        else f"Exported to {summary.directory}:"
    ]
    verbs = {
        "created": "would be created" if would else "created",
        "replaced": "would be replaced" if would else "replaced",
        "unchanged": "unchanged",
    }
    for f in summary.files:
        count = f" ({f.memories} memor{'y' if f.memories == 1 else 'ies'})" if f.memories is not None else ""
        lines.append(f"  {f.file}{count}: {verbs[f.action]}")
    if summary.left_alone:
        lines.append("Left as they were (not written by this export): " + ", ".join(summary.left_alone))
    lines += summary.notes
    lines.append(
        f"{summary.documents} document{'s' if summary.documents != 1 else ''} and "
        f"{summary.memories} memor{'y' if summary.memories == 1 else 'ies'} in {len(summary.files)} file{'' if len(summary.files) == 1 else 's'}."
    )
    return "\n".join(lines)
