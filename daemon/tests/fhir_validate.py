#!/usr/bin/env python3
"""Validate FHIR resources read from stdin against the FHIR R4 structure definitions.

Input: one JSON resource, a JSON array of resources, or NDJSON (one resource per line).
Output: "ok: N resources" and exit 0, or the first invalid resource with the reason and exit 1.
Exit 2 when the validator itself is missing (pip install 'fhir.resources>=8,<9').

Uses the PyPI package fhir.resources. Its 8.x default models are FHIR R5; it ships R4B (4.3)
and STU3 subpackages but no plain R4 (4.0.1) one. R4B changed no element that MIG emits
(AuditEvent, Bundle, OperationOutcome, Patient, List, CapabilityStatement and the clinical
resources are the same shape as in R4), so the R4B models stand in for R4 here. Pydantic checks
structure, cardinality, primitive formats and unknown elements; it does not check terminology
bindings or invariants, so the script adds the few R4 invariants MIG depends on.
"""

import json
import sys

try:
    from fhir.resources.R4B import get_fhir_model_class
except ImportError as e:  # pragma: no cover - depends on the environment
    print(f"fhir.resources with R4B models is not installed: {e}", file=sys.stderr)
    sys.exit(2)


def read_resources(text):
    """Yields (where, resource) pairs."""
    stripped = text.strip()
    if not stripped:
        return
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        for i, resource in enumerate(whole, 1):
            yield f"item {i}", resource
        return
    if isinstance(whole, dict):
        yield "input", whole
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {number}", e


def extra_checks(resource):
    """R4 invariants that the models do not enforce. Returns a reason or None."""
    if resource.get("resourceType") == "AuditEvent":
        for i, entity in enumerate(resource.get("entity", [])):
            if "name" in entity and "query" in entity:
                return f"AuditEvent.entity[{i}]: sev-1, either a name or a query (not both)"
        if resource.get("outcome") not in (None, "0", "4", "8", "12"):
            return "AuditEvent.outcome must be one of 0, 4, 8, 12"
        if resource.get("action") not in (None, "C", "R", "U", "D", "E"):
            return "AuditEvent.action must be one of C, R, U, D, E"
    if resource.get("resourceType") == "Bundle":
        for i, entry in enumerate(resource.get("entry", [])):
            inner = entry.get("resource")
            if isinstance(inner, dict):
                reason = extra_checks(inner)
                if reason:
                    return f"Bundle.entry[{i}].resource: {reason}"
    return None


def main():
    count = 0
    for where, resource in read_resources(sys.stdin.read()):
        if isinstance(resource, Exception):
            print(f"invalid: {where}: not JSON: {resource}")
            return 1
        if not isinstance(resource, dict) or "resourceType" not in resource:
            print(f"invalid: {where}: not a FHIR resource (no resourceType)")
            return 1
        resource_type = resource["resourceType"]
        name = f"{resource_type}/{resource.get('id', '(no id)')}"
        try:
            model = get_fhir_model_class(resource_type)
        except Exception as e:  # unknown type
            print(f"invalid: {where}: {name}: unknown resource type: {e}")
            return 1
        try:
            model.model_validate(resource)
        except Exception as e:
            print(f"invalid: {where}: {name}:\n{e}\nresource: {json.dumps(resource)}")
            return 1
        reason = extra_checks(resource)
        if reason:
            print(f"invalid: {where}: {name}: {reason}\nresource: {json.dumps(resource)}")
            return 1
        count += 1
    if count == 0:
        print("invalid: no resources on stdin")
        return 1
    print(f"ok: {count} resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
