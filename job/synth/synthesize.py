"""`job synthesize`: a folder of documents -> (question, passage) pairs that `job run --data` trains on.

1. read and chunk the documents (:mod:`job.synth.documents`);
2. ask an OpenAI-compatible LLM for ``questions_per_chunk`` questions per chunk, in parallel, every answer
   kept on disk as it arrives (:mod:`job.synth.llm`): a killed run, started again, asks only for what is missing;
3. filter, each reason counted: empty answers, lines that are not questions, too short / too long,
   questions that talk about "the passage" instead of its subject, questions that copy the chunk, duplicates,
   and the **round-trip consistency filter** (InPars / Promptagator): the base embedding model must rank
   the question's own chunk within the top ``consistency_top_k`` of all chunks, or the question is dropped;
4. write the pairs (``question``, ``passage``, ``chunk_id``, ``document``, ``chunk_index``), the dropped
   questions with their reason, and a summary JSON beside them; print a summary line and a few pairs.

Outputs for ``--out DIR/pairs.jsonl``: ``pairs.jsonl``, ``pairs.answers.jsonl`` (the answer cache),
``pairs.dropped.jsonl``, ``pairs.summary.json`` (the step's done record, written last).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np

from job.config import JobConfig, fingerprint_digest
from job.errors import JobError
from job.layout import write_json
from job.redact import redact_url
from job.synth import documents, grounding, llm

Echo = Callable[[str], None]
MIN_PAIRS = 10  # fewer cannot be split into train / validation / test
MIN_WORDS, MAX_WORDS = 4, 40
REASONS = (
    "request_failed",
    "empty_answer",
    "not_a_question",
    "too_short",
    "too_long",
    "mentions_passage",
    "echoes_prompt",
    "copies_chunk",
    "duplicate",
    "ungrounded",
    "inconsistent",
)
_LEAD = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|q\d*\s*[:.)]|question\s*\d*\s*[:.)])\s*", re.IGNORECASE)
_INTERROGATIVE = re.compile(
    r"^(what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|should|would|will|"
    r"has|have|had|in what|on what|for what|to what|by how|according to)\b",
    re.IGNORECASE,
)
_MENTIONS = re.compile(
    r"\b(the|this|that|above|given|provided|following)\s+(passage|text|excerpt|paragraph|context|document|snippet)\b",
    re.IGNORECASE,
)
_WORDS = re.compile(r"\w+", re.UNICODE)
# a sentence ends at . ! or ? followed by a space and a capital or an opening quote or bracket ("3.1%", "e.g. in"
# and "Fig. 2b" stay whole; "vs. Placebo" is cut, a rare loss in a query of one sentence)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'“‘(\[])")


def side_files(out: Path) -> dict[str, Path]:
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {
        "pairs": out,
        "answers": out.with_name(f"{stem}.answers.jsonl"),
        "dropped": out.with_name(f"{stem}.dropped.jsonl"),
        "summary": out.with_name(f"{stem}.summary.json"),
    }


def settings_of(cfg: JobConfig) -> llm.LLMSettings:
    if not cfg.llm_model:
        raise JobError(
            "job synthesize needs the LLM's model name.",
            "pass --llm-model (e.g. gpt-4o-mini on OpenAI, or the model your local server serves) and --llm-base-url "
            "for any server other than OpenAI's.",
        )
    llm.check_base_url(cfg.llm_base_url)
    return llm.LLMSettings(
        base_url=cfg.llm_base_url,
        model=cfg.llm_model,
        api_key_env=cfg.llm_api_key_env,
        questions=cfg.questions_per_chunk,
        temperature=cfg.llm_temperature,
        max_tokens=cfg.llm_max_tokens or 64 * cfg.questions_per_chunk,
        timeout=cfg.llm_timeout,
        max_retries=cfg.llm_max_retries,
        concurrency=cfg.llm_concurrency,
    )


# --- parsing and rule filters ---------------------------------------------------------------------
def parse_questions(answer: str, n: int, form: str = "question") -> list[str]:
    """The first ``n`` questions of an answer (one per line, or several on a line, each ending in '?';
    numbering, bullets, "Question:" labels and quotes removed; a preamble such as "Sure, here they are:"
    passed over). An answer with no question at all gives its first line, to be counted as not a question.
    ``form="statement"``: one statement per sentence, whatever its punctuation, cleaned the same way: a line that
    runs on into a paragraph (small models do) gives its sentences in order, so its first sentence is the first
    candidate rather than the whole paragraph being dropped as too long."""
    pieces = []
    for line in answer.splitlines():
        text = _LEAD.sub("", line.strip()).strip().strip("\"'“”‘’`*").strip()
        split = re.findall(r"[^?]*\?|[^?]+$", text) if form == "question" else _SENTENCE_END.split(text)
        for piece in split if text else []:
            piece = _LEAD.sub("", piece.strip()).strip().strip("\"'“”‘’`*").strip()
            if piece:
                pieces.append(piece)
    questions = [p for p in pieces if normalise_query(p, form) is not None]
    return questions[:n] if questions else pieces[:1]


def normalise_query(text: str, form: str = "question") -> str | None:
    """The query as it is kept: a question (:func:`normalise_question`), or a statement with its whitespace
    collapsed (None: empty, or a preamble line such as "Here are the statements:")."""
    if form == "question":
        return normalise_question(text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if text and not text.endswith(":") else None


def normalise_question(text: str) -> str | None:
    """The question ending in exactly one '?', or None when the line is not a question."""
    text = re.sub(r"\s+", " ", text).strip()
    if text.endswith("?"):
        return text.rstrip("?").rstrip() + "?"
    if _INTERROGATIVE.match(text):
        return text.rstrip(".!:;, ") + "?"
    return None


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORDS.findall(text)]


def copies_chunk(question: str, chunk: str) -> bool:
    """Most of the question is one verbatim run of the chunk's words (a sentence turned into a 'question')."""
    q, c = words(question), words(chunk)
    if len(q) < 5:
        return False
    match = SequenceMatcher(None, q, c, autojunk=False).find_longest_match(0, len(q), 0, len(c))
    return match.size >= 0.8 * len(q)


def echoes_prompt(question: str, examples: Sequence[str]) -> bool:
    """The question is (nearly) one of the prompt's own example answers: a small model repeating its example."""
    q = words(question)
    return any(SequenceMatcher(None, q, words(e), autojunk=False).ratio() >= 0.8 for e in examples)


def example_pairs(prompt: llm.Prompt) -> list[tuple[str, str]]:
    """(example passage, example question) for every assistant message of the prompt that follows a user one."""
    pairs = []
    for (role_a, text_a), (role_b, text_b) in zip(prompt.messages, prompt.messages[1:]):
        if role_a == "user" and role_b == "assistant":
            pairs.append((text_a.split("Passage:", 1)[-1].strip(), text_b))
    return pairs


def rule_check(question: str | None, chunk: str, seen: set[str], examples: Sequence[str] = ()) -> str | None:
    """The first rule a candidate breaks (its drop reason), or None when it passes every rule."""
    if question is None:
        return "not_a_question"
    n = len(words(question))
    if n < MIN_WORDS:
        return "too_short"
    if n > MAX_WORDS:
        return "too_long"
    if _MENTIONS.search(question):
        return "mentions_passage"
    if examples and echoes_prompt(question, examples):
        return "echoes_prompt"
    if copies_chunk(question, chunk):
        return "copies_chunk"
    if " ".join(words(question)) in seen:
        return "duplicate"
    return None


# --- the consistency filter ---------------------------------------------------------------------
def own_chunk_ranks(
    model, questions: list[str], own: list[int], chunks: list[str], cfg: JobConfig, block: int = 1024
) -> list[int]:
    """For each question, the rank (1 = best) of its own chunk among all chunks by the base model's cosine
    similarity; a tie counts in the question's favour."""
    if not questions:
        return []
    kw = {"batch_size": cfg.eval_batch_size, "convert_to_numpy": True, "show_progress_bar": len(chunks) > 2000}
    c = np.asarray(model.encode_document(chunks, prompt=cfg.passage_prompt, **kw), dtype=np.float32)
    q = np.asarray(model.encode_query(questions, prompt=cfg.query_prompt, **kw), dtype=np.float32)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    ranks = []
    own_arr = np.asarray(own)
    for s in range(0, len(q), block):
        scores = q[s : s + block] @ c.T
        mine = scores[np.arange(scores.shape[0]), own_arr[s : s + block]]
        ranks += (1 + (scores > mine[:, None]).sum(axis=1)).tolist()
    return ranks


# --- generation ----------------------------------------------------------------------------------
def generate(
    chunks: list[documents.Chunk],
    prompt: llm.Prompt,
    settings: llm.LLMSettings,
    cache: llm.AnswerCache,
    echo: Echo,
    client=None,
) -> dict[str, int]:
    """Ask for every chunk that has no cached answer, ``settings.concurrency`` requests at a time. Each
    answer is in the cache when its request returns. A request that fails for its chunk alone (HTTP 400:
    too long for the model's context, ...) is recorded as failed; an error no retry can mend stops
    everything with the fix, the answers so far kept."""
    from tqdm.auto import tqdm

    keys = {c.id: llm.answer_key(c.text, prompt, settings) for c in chunks}
    todo = [c for c in chunks if not llm.usable(cache.get(keys[c.id]))]  # failed or empty: asked again
    stats = {"asked": len(todo), "cached": len(chunks) - len(todo), "failed": 0}
    if not todo:
        return stats
    client = client or llm.make_client(settings)
    fatal: list[JobError] = []

    def one(chunk: documents.Chunk) -> None:
        if fatal:
            return
        try:
            got = llm.ask(client, settings, prompt.render(chunk.text, settings.questions))
        except Exception as exc:  # noqa: BLE001 - sorted into fatal / this chunk only
            kept = f"{len(cache.records)} answers are kept in {cache.path}."
            error = llm.fatal_error(exc, settings, kept)
            if error is not None:
                fatal.append(error)
                raise error from None
            got = {"answer": None, "error": llm.masked(f"{type(exc).__name__}: {exc}", settings)[:500]}
            stats["failed"] += 1
        cache.put({"key": keys[chunk.id], "chunk_id": chunk.id, "prompt": prompt.digest, **settings.generation_key(),
                   **got})  # fmt: skip
        bar.update(1)

    bar = tqdm(total=len(todo), desc="synthesize: questions", unit="chunk", dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=max(1, settings.concurrency), thread_name_prefix="llm")
    try:
        futures = [pool.submit(one, c) for c in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if (exc := f.exception()) is not None and not fatal:
                raise exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if fatal:
        raise fatal[0]
    return stats


def other_settings_in_cache(
    cache: llm.AnswerCache, chunks: list[documents.Chunk], prompt: llm.Prompt, settings: llm.LLMSettings
) -> str | None:
    """Say so when the cache holds answers for these chunks made with another prompt or other settings."""
    ids = {c.id for c in chunks}
    now = {"prompt": prompt.digest, **settings.generation_key()}
    other: Counter[str] = Counter()
    for rec in cache.records.values():
        if rec.get("chunk_id") in ids:
            then = {k: rec.get(k) for k in now}
            if then != now:
                other[", ".join(f"{k} {then[k]!r} -> {now[k]!r}" for k in now if then[k] != now[k])] += 1
    if not other:
        return None
    change, n = other.most_common(1)[0]
    return (
        f"synthesize: {cache.path} holds {sum(other.values())} answers for these chunks made with other settings "
        f"({change}); they are kept but not used, and these chunks are asked again"
    )


# --- the step ------------------------------------------------------------------------------------
def synthesize(cfg: JobConfig, sources: list[str], out: Path, echo: Echo = print, model=None, client=None) -> dict:
    """Documents -> pairs file; returns the summary (also written to ``<stem>.summary.json``)."""
    from job.models import load_model, resolve_model_name

    start = time.perf_counter()
    settings = settings_of(cfg)
    prompt = llm.load_prompt(cfg.prompt_file, cfg.query_form)
    paths = side_files(Path(out))
    read = documents.read_documents(sources, cfg.text_column)
    for name, why in read.skipped:
        echo(f"synthesize: skipped {name}: {why}")
    if not read.documents:
        listed = f" ({len(read.skipped)} skipped, each named above)" if read.skipped else ""
        raise JobError(
            f"No readable documents in {', '.join(map(str, sources))}: {read.files} files{listed}.",
            f"point --docs at files of these kinds: {', '.join(documents.SUPPORTED)} (scanned PDFs need OCR first).",
        )
    model = model or load_model(cfg.model, max_seq_length=cfg.max_seq_length)
    chunk_tokens = cfg.chunk_tokens or max(8, int(model.max_seq_length) - 2)
    chunks, repeats = documents.chunk_documents(read.documents, model.tokenizer, chunk_tokens, cfg.chunk_overlap)
    echo(
        f"synthesize: {read.files} files, {len(read.documents)} documents -> {len(chunks)} chunks of at most "
        f"{chunk_tokens} tokens ({repeats} repeated chunks dropped); asking {settings.describe()}"
    )
    paths["pairs"].parent.mkdir(parents=True, exist_ok=True)
    cache = llm.AnswerCache(paths["answers"])
    if cache.torn:
        echo(f"synthesize: {cache.path} ended in a torn line (a run was killed mid-write); dropped it")
    if cache.damaged:
        lines = ", ".join(map(str, cache.damaged[:5])) + (" ..." if len(cache.damaged) > 5 else "")
        echo(
            f"synthesize: {cache.path} has {len(cache.damaged)} damaged line(s) (line {lines}): skipped, the other "
            f"{len(cache.records)} answers kept; the chunks they were for are asked again"
        )
    changed = other_settings_in_cache(cache, chunks, prompt, settings)
    if changed:
        echo(changed)
    gen_start = time.perf_counter()
    requests = generate(chunks, prompt, settings, cache, echo, client=client)
    gen_seconds = time.perf_counter() - gen_start

    # parse and filter, chunk by chunk, in document order
    dropped_reasons: Counter[str] = Counter()
    dropped_rows: list[dict[str, Any]] = []
    candidates: list[tuple[str, int]] = []  # (question, chunk index) that passed the rules
    seen: set[str] = set()
    examples = [text for role, text in prompt.messages if role == "assistant"]
    leak_terms = grounding.example_terms(example_pairs(prompt))
    ungrounded_seen = 0  # candidates that name what their passage does not, counted whether or not the filter is on
    usage: dict[str, float] = {
        "tokens_in": 0,
        "tokens_out": 0,
        "seconds": 0.0,
        "usage_unknown": 0,
        "usage_implausible": 0,
    }
    for i, chunk in enumerate(chunks):
        rec = cache.get(llm.answer_key(chunk.text, prompt, settings)) or {}  # (none: counted as a failed request)
        # a count beyond what the request could hold (every byte a token, plus the chat template) is the
        # server's nonsense, not a bill: counted as unknown, and said
        sent = sum(len(m["content"].encode()) for m in prompt.render(chunk.text, settings.questions))
        limits = {
            "tokens_in": sent + 4096,
            "tokens_out": max(settings.max_tokens, len((rec.get("answer") or "").encode())) + 64,
        }
        counts = {k: llm.plausible_tokens(rec.get(k), limits[k]) for k in limits}
        if any(counts[k] is None and rec.get(k) is not None for k in limits):
            usage["usage_implausible"] += 1
        elif counts["tokens_in"] is None:
            usage["usage_unknown"] += 1
        if all(v is not None for v in counts.values()):
            for k in limits:
                usage[k] += counts[k] or 0
        usage["seconds"] += rec.get("seconds") or 0.0
        if rec.get("answer") is None:
            dropped_reasons["request_failed"] += 1
            dropped_rows.append({"chunk_id": chunk.id, "reason": "request_failed", "error": rec.get("error")})
            continue
        parsed = parse_questions(rec["answer"], settings.questions, cfg.query_form)
        if not parsed:
            dropped_reasons["empty_answer"] += 1
            dropped_rows.append({"chunk_id": chunk.id, "reason": "empty_answer", "answer": rec["answer"]})
            continue
        for line in parsed:
            question = normalise_query(line, cfg.query_form)
            reason = rule_check(question, chunk.text, seen, examples)
            if reason or question is None:  # (no question: rule_check names why)
                reason = reason or "not_a_question"
                dropped_reasons[reason] += 1
                dropped_rows.append({"chunk_id": chunk.id, "reason": reason, "question": question or line})
                continue
            term = grounding.ungrounded_term(question, chunk.text, leak_terms)
            ungrounded_seen += term is not None
            if term is not None and cfg.grounding_filter:
                dropped_reasons["ungrounded"] += 1
                dropped_rows.append({"chunk_id": chunk.id, "reason": "ungrounded", "question": question, "term": term})
                continue
            seen.add(" ".join(words(question)))
            candidates.append((question, i))
    kept = candidates
    ranks: list[int] = []
    if cfg.consistency_top_k and candidates:
        ranks = own_chunk_ranks(model, [q for q, _ in candidates], [i for _, i in candidates], [c.text for c in chunks],
                                cfg)  # fmt: skip
        kept = []
        for (question, i), rank in zip(candidates, ranks):
            if rank <= cfg.consistency_top_k:
                kept.append((question, i))
            else:
                dropped_reasons["inconsistent"] += 1
                dropped_rows.append({"chunk_id": chunks[i].id, "reason": "inconsistent", "question": question,
                                     "own_chunk_rank": rank})  # fmt: skip

    from job.data.prepare import write_jsonl

    pairs = [
        {"question": q, "passage": chunks[i].text, "chunk_id": chunks[i].id, "document": chunks[i].document,
         "chunk_index": chunks[i].index}
        for q, i in kept
    ]  # fmt: skip
    write_jsonl(paths["pairs"], pairs)
    write_jsonl(paths["dropped"], dropped_rows)
    generated = sum(dropped_reasons.values()) + len(kept)
    cost = None
    if cfg.llm_price_in is not None or cfg.llm_price_out is not None:
        cost = round(
            usage["tokens_in"] * (cfg.llm_price_in or 0) / 1e6 + usage["tokens_out"] * (cfg.llm_price_out or 0) / 1e6,
            6,
        )
    summary = {
        "outputs": {k: str(v) for k, v in paths.items()},
        "generator": {
            "base_url": redact_url(cfg.llm_base_url) or "(the openai client's default)",
            "model": settings.model,
            "prompt": prompt.source,
            "prompt_digest": prompt.digest,
            "questions_per_chunk": settings.questions,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
        },
        "documents": {
            "files": read.files,
            "documents": len(read.documents),
            "skipped": [{"file": f, "reason": r} for f, r in read.skipped],
        },
        "chunks": {
            "count": len(chunks),
            "repeats_dropped": repeats,
            "chunk_tokens": chunk_tokens,
            "chunk_overlap": cfg.chunk_overlap,
            "tokenizer": resolve_model_name(cfg.model),
        },  # fmt: skip
        "requests": requests,
        "tokens": {
            "in": usage["tokens_in"],
            "out": usage["tokens_out"],
            "answers_without_usage": usage["usage_unknown"],
            "answers_with_implausible_usage": usage["usage_implausible"],
            "per_1000_chunks_in": round(1000 * usage["tokens_in"] / max(1, len(chunks))),
            "per_1000_chunks_out": round(1000 * usage["tokens_out"] / max(1, len(chunks))),
        },
        "cost": cost,
        "price_per_million_tokens": {"in": cfg.llm_price_in, "out": cfg.llm_price_out},
        "generation_seconds_all_answers": round(usage["seconds"], 1),
        "generation_seconds_this_run": round(gen_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "questions": {
            "generated": generated,
            "kept": len(kept),
            "dropped": {r: dropped_reasons.get(r, 0) for r in REASONS},
        },
        "grounding": {
            "enabled": cfg.grounding_filter,
            "example_terms": list(leak_terms),
            "ungrounded_candidates": ungrounded_seen,
            "ungrounded_share_of_rule_passing": round(
                ungrounded_seen / max(1, len(candidates) + dropped_reasons["ungrounded"]), 4
            ),
        },
        "consistency": {
            "top_k": cfg.consistency_top_k,
            "model": resolve_model_name(cfg.model),
            "own_chunk_rank_histogram": dict(sorted(Counter(min(r, 11) for r in ranks).items())),
        },
        "fingerprint": synth_fingerprint(cfg, sources),
    }
    write_json(paths["summary"], summary)
    _echo_summary(echo, summary, pairs, paths)
    if len(pairs) < MIN_PAIRS:
        raise JobError(
            f"Only {len(pairs)} of {generated} generated questions were kept (dropped: "
            f"{', '.join(f'{r} {n}' for r, n in dropped_reasons.most_common() if n)}), fewer than the {MIN_PAIRS} "
            f"needed to split into train, validation and test. The answers are kept in {paths['answers']} (failed or "
            f"empty answers are asked again on the next run), the dropped questions with their reason in "
            f"{paths['dropped']}.",
            "add documents, raise --questions-per-chunk, use a stronger --llm-model or --prompt-file, or loosen the "
            "filter (--consistency-top-k larger, 0 turns it off)"
            + (
                "; the answers are mostly statements: if your users search with statements, --query-form statement "
                "keeps them."
                if cfg.query_form == "question" and dropped_reasons["not_a_question"] * 2 > generated
                else "."
            ),
        )
    return summary


def synth_fingerprint(cfg: JobConfig, sources: list[str]) -> dict[str, Any]:
    from job.config import SYNTH_FIELDS

    return {**cfg.fingerprint(SYNTH_FIELDS), "docs_digest": docs_digest(sources, cfg.prompt_file)}


def docs_digest(sources: list[str], prompt_file: str | None = None) -> str:
    """Over every document file's name, size and modification time, and the prompt file's content."""
    entries = []
    for path, label in documents.collect_files(sources):
        st = path.stat()
        entries.append([label, st.st_size, st.st_mtime_ns])
    if prompt_file and Path(prompt_file).expanduser().is_file():
        entries.append(["prompt", Path(prompt_file).expanduser().read_text(encoding="utf-8", errors="replace")])
    return fingerprint_digest({"docs": entries})


def _echo_summary(echo: Echo, s: dict, pairs: list[dict], paths: dict[str, Path]) -> None:
    q, t, r = s["questions"], s["tokens"], s["requests"]
    drops = ", ".join(f"{k} {v}" for k, v in q["dropped"].items() if v) or "none"
    cost = f", cost ${s['cost']:.4f}" if s["cost"] is not None else ""
    if t.get("answers_with_implausible_usage"):
        cost += f" ({t['answers_with_implausible_usage']} answers with impossible token counts not billed)"
    echo(
        f"synthesize: {s['chunks']['count']} chunks, {r['asked']} requests ({r['cached']} answers from the cache, "
        f"{r['failed']} failed), tokens in/out {t['in']:,}/{t['out']:,}{cost}, {s['seconds']:.0f} s; "
        f"questions {q['generated']}: kept {q['kept']}, dropped {drops} -> {paths['pairs']} "
        f"(dropped questions: {paths['dropped']}; summary: {paths['summary']})"
    )
    for p in random.Random(0).sample(pairs, min(3, len(pairs))):
        passage = p["passage"] if len(p["passage"]) <= 160 else p["passage"][:157] + "..."
        echo(f"  Q: {p['question']}\n     P: {passage}")
