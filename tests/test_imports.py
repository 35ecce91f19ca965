"""No import cycle among lkd_jax modules (imports inside functions count too)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'lkd_jax'


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> dict[str, set[str]]:
  """{module: lkd_jax modules it imports}; a module's own parent packages are left out (importing
  a submodule imports its package anyway, so that edge is never a cycle of the code's making)."""
  modules = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    is_pkg = path.name == '__init__.py'
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          anchor = name.split('.') if is_pkg else name.split('.')[:-1]
          base = '.'.join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))
        targets = [base] + [f'{base}.{a.name}' for a in node.names]
      else:
        continue
      deps.update(t for t in targets if t in modules)
    ancestors = {'.'.join(name.split('.')[:i]) for i in range(1, name.count('.') + 1)}
    graph[name] = deps - ancestors - {name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return stack[stack.index(dep):] + [dep]
      if dep not in state and (cycle := visit(dep)):
        return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_find_cycle_finds_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycle_among_lkd_jax_modules():
  graph = import_graph()
  assert 'lkd_jax.train' in graph and 'lkd_jax.checkpoints' in graph['lkd_jax.train']
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))
