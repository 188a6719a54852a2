#!/usr/bin/env python
"""Architecture metrics of a Python package, read from its source (nothing is imported).

    python scripts/code_metrics.py [PACKAGE_DIR] [--json] [--layers PREFIX,PREFIX,...]

Reports modules per folder, the module-level import graph's depth ("floors"), import cycles
(with and without function-local imports), function-local imports, the longest functions,
optional layer violations, and flags declared in more than one place.
"""
import argparse
import ast
import json
import os
import sys
from collections import Counter, defaultdict

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def find_modules(package_dir):
    """{dotted module name: path}; a package's __init__ is named after the package itself."""
    package_dir = os.path.abspath(package_dir)
    root = os.path.dirname(package_dir)
    modules = {}
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = os.path.join(folder, name)
    return modules


def modules_per_folder(package_dir):
    root = os.path.dirname(os.path.abspath(package_dir))
    return dict(sorted(Counter(os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
                               for path in find_modules(package_dir).values()).items()))


def _parse(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _name(node):
    """`name` of a Name or an Attribute (`a.b.name`), else None."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _walk(node, where="module"):
    """Yield (import statement, where) under node; where is "module", "local" (in a function
    body) or "typing" (under `if TYPE_CHECKING:`, which never runs). Class bodies run at
    import time, so they count as module level."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, where
        return
    if isinstance(node, FUNCTIONS):
        where = "local"
    if isinstance(node, ast.If) and _name(node.test) == "TYPE_CHECKING" and where == "module":
        parts = [(node.body, "typing"), (node.orelse, where)]
    else:
        parts = [(ast.iter_child_nodes(node), where)]
    for children, kind in parts:
        for child in children:
            yield from _walk(child, kind)


def _targets(stmt, module, is_package, modules, package):
    """Names of the package's own modules an import statement imports; empty for other
    packages. A name that is no module (a broken import) is kept, for unresolved_imports."""
    if isinstance(stmt, ast.Import):
        return {a.name for a in stmt.names if (a.name + ".").startswith(package + ".")}
    if stmt.level:  # relative: level 1 is this module's own package
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(stmt.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{stmt.module}" if stmt.module else base
    else:
        source = stmt.module
    if not (source + ".").startswith(package + "."):
        return set()
    # `from pkg import name`: pkg.name when that is a submodule, else pkg itself.
    return {f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in stmt.names}


def scan(package_dir):
    """({module: path}, {module: [(import statement, where, own targets)]})."""
    modules = find_modules(package_dir)
    package = os.path.basename(os.path.abspath(package_dir))
    found = {m: [(stmt, where, _targets(stmt, m, path.endswith("__init__.py"), modules, package))
                 for stmt, where in _walk(_parse(path))] for m, path in modules.items()}
    return modules, found


def _imports(package_dir, kinds):
    modules, found = scan(package_dir)
    return {m: {t for _, where, targets in imports if where in kinds for t in targets if t in modules} - {m}
            for m, imports in found.items()}


def import_graph(package_dir):
    """Module-level edges only: what importing a module runs right away (TYPE_CHECKING
    blocks left out: they never run, and exist precisely to avoid a runtime cycle)."""
    return _imports(package_dir, {"module"})


def all_imports(package_dir):
    """Edges from imports anywhere in the file: function-local (lazy) and TYPE_CHECKING ones too."""
    return _imports(package_dir, {"module", "local", "typing"})


def unresolved_imports(package_dir):
    """Own-package names imported but found nowhere (e.g. mid-refactor): {module: [names]}."""
    modules, found = scan(package_dir)
    missing = {m: sorted({t for _, _, targets in imports for t in targets if t not in modules})
               for m, imports in found.items()}
    return {m: names for m, names in missing.items() if names}


def strongly_connected(graph):
    """Tarjan's algorithm, iterative so deep graphs don't hit the recursion limit."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start), on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt), on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while node not in component:
                        component.add(stack.pop())
                    on_stack -= component
                    components.append(component)
    return components


def cycles(graph):
    return sorted((sorted(c) for c in strongly_connected(graph) if len(c) > 1), key=lambda c: (-len(c), c))


def import_floors(graph):
    """(levels, one longest chain): the longest path, in nodes, of the graph with every cycle
    condensed into one node, so a cycle counts as a single floor."""
    component_of = {m: i for i, c in enumerate(strongly_connected(graph)) for m in c}
    dag = defaultdict(set)
    for a, targets in graph.items():
        dag[component_of[a]] |= {component_of[b] for b in targets} - {component_of[a]}
    chain = {}  # Tarjan emits sinks first, so every successor's chain is known when needed
    for c in sorted(set(component_of.values())):
        best = max((chain[d] for d in dag[c]), key=len, default=[])
        chain[c] = [c] + best
    longest = max(chain.values(), key=len, default=[])
    members = defaultdict(list)
    for m, c in component_of.items():
        members[c].append(m)
    return len(longest), ["/".join(map(str, sorted(members[c]))) for c in longest]


def function_local_imports(package_dir):
    """Import statements inside function bodies, per module: the package's own modules
    (often a hidden cycle) apart from third-party ones (often deliberate, for a fast --help)."""
    own, third = Counter(), Counter()
    for module, imports in scan(package_dir)[1].items():
        for stmt, where, targets in imports:
            if where != "local":
                continue
            if targets:
                own[module] += 1
            elif not getattr(stmt, "level", 0):
                names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module]
                if any(n.split(".")[0] not in sys.stdlib_module_names for n in names):
                    third[module] += 1
    return {"own": dict(own.most_common()), "own_total": sum(own.values()),
            "third_party": dict(third.most_common()), "third_party_total": sum(third.values())}


def _definitions(tree):
    """Yield (qualname, node) for every function and class, nested ones included."""
    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield prefix + child.name, child
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)
    return visit(tree, "")


def longest_functions(package_dir, count=10):
    sizes = [(node.end_lineno - node.lineno + 1, f"{module}:{name}")
             for module, path in find_modules(package_dir).items()
             for name, node in _definitions(_parse(path)) if not isinstance(node, ast.ClassDef)]
    return [f"{name} {lines}" for lines, name in sorted(sizes, key=lambda s: (-s[0], s[1]))[:count]]


def layer_violations(graph, layers, module_level):
    """Edges from a lower layer up to a higher one; a module's layer is its longest matching prefix."""
    def layer(m):
        matches = [(len(p), i) for i, p in enumerate(layers) if m == p or m.startswith(p + ".")]
        return max(matches)[1] if matches else None
    return [f"{a} -> {b}" + ("" if b in module_level.get(a, ()) else " (not module-level)")
            for a in sorted(graph) for b in sorted(graph[a])
            if layer(a) is not None and layer(b) is not None and layer(a) < layer(b)]


def repeated_flags(package_dir):
    """Flag names (as argparse dests) declared in more than one place: dataclass fields
    defaulting to flag(...)/field(...), and parser.add_argument("--name", ...) calls."""
    places = defaultdict(list)
    for module, path in find_modules(package_dir).items():
        for qualname, node in _definitions(_parse(path)):
            if isinstance(node, ast.ClassDef) and any(
                    _name(d.func if isinstance(d, ast.Call) else d) == "dataclass" for d in node.decorator_list):
                for stmt in node.body:
                    if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                            and isinstance(stmt.value, ast.Call) and _name(stmt.value.func) in ("flag", "field")):
                        places[stmt.target.id].append(f"{module}:{qualname}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for call in ast.walk(node):  # nested functions are also visited on their own: dedup below
                    if isinstance(call, ast.Call) and _name(call.func) == "add_argument":
                        for arg in call.args:
                            if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                                places[arg.value[2:].replace("-", "_")].append(f"{module}:{qualname}")
    places = {name: sorted(set(p)) for name, p in places.items()}
    repeated = {name: p for name, p in sorted(places.items()) if len(p) > 1}
    return {"count": len(repeated), "names": repeated}


def metrics(package_dir, layers=None):
    graph, everything = import_graph(package_dir), all_imports(package_dir)
    floors, chain = import_floors(graph)
    result = {
        "modules_per_folder": modules_per_folder(package_dir),
        "import_edges": {"module_level": sum(map(len, graph.values())), "all": sum(map(len, everything.values()))},
        "import_floors": floors, "longest_import_chain": chain,
        "cycles": {"all_imports": cycles(everything), "module_level": cycles(graph)},
        "function_local_imports": function_local_imports(package_dir),
        "longest_functions": longest_functions(package_dir),
        "repeated_flags": repeated_flags(package_dir),
        "unresolved_imports": unresolved_imports(package_dir),
    }
    if layers:
        result["layer_violations"] = layer_violations(everything, layers, graph)
    return result


def print_report(m):
    print("modules per folder:")
    for folder, n in m["modules_per_folder"].items():
        print(f"  {folder:<24} {n}")
    print(f"  {'total':<24} {sum(m['modules_per_folder'].values())}")
    print(f"import edges: {m['import_edges']['module_level']} module-level, {m['import_edges']['all']} in all")
    print(f"import floors: {m['import_floors']}  ({' -> '.join(m['longest_import_chain'])})")
    for kind in ("all_imports", "module_level"):
        found = m["cycles"][kind]
        print(f"cycles ({kind.replace('_', ' ')}): {len(found)}")
        for c in found:
            print("  " + " <-> ".join(c))
    local = m["function_local_imports"]
    print(f"function-local imports: {local['own_total']} of own modules, {local['third_party_total']} third-party")
    for module in sorted(set(local["own"]) | set(local["third_party"])):
        print(f"  {module:<32} own {local['own'].get(module, 0):>3}   third-party {local['third_party'].get(module, 0):>3}")
    print("longest functions:")
    for line in m["longest_functions"]:
        print("  " + line)
    if "layer_violations" in m:
        print(f"layer violations: {len(m['layer_violations'])}")
        for line in m["layer_violations"]:
            print("  " + line)
    if m["unresolved_imports"]:
        print(f"unresolved own imports (edges left out) in {len(m['unresolved_imports'])} modules:")
        for module, names in m["unresolved_imports"].items():
            print(f"  {module:<32} {', '.join(names)}")
    flags = m["repeated_flags"]
    print(f"repeated flags: {flags['count']} names")
    for name, places in flags["names"].items():
        print(f"  {name:<28} {', '.join(places)}")


def main(argv=None):
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_loop")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", nargs="?", default=default)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--layers", default=None,
                        help="comma-separated module-name prefixes, lowest layer first")
    args = parser.parse_args(argv)
    layers = [p.strip() for p in args.layers.split(",") if p.strip()] if args.layers else None
    result = metrics(args.package_dir, layers)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
