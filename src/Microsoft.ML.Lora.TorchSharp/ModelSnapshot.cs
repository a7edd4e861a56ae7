using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// What adding an adapter changes in a model (modules, adapters per LoRA layer, per-adapter copies of modules_to_save,
/// requires_grad), recorded so that a failed load can put the model back as it was.
/// </summary>
internal sealed class ModelSnapshot
{
    private readonly Dictionary<string, nn.Module> _modules;
    private readonly Dictionary<Modules.LoraLayer, HashSet<string>> _adapters;
    private readonly List<(Parameter parameter, bool requiresGrad)> _grads;
    private readonly Dictionary<nn.Module, (HashSet<string> adapters, string live)> _savedModules;

    private ModelSnapshot(Dictionary<string, nn.Module> modules, Dictionary<Modules.LoraLayer, HashSet<string>> adapters,
        List<(Parameter, bool)> grads, Dictionary<nn.Module, (HashSet<string>, string)> savedModules)
    {
        _modules = modules;
        _adapters = adapters;
        _grads = grads;
        _savedModules = savedModules;
    }

    internal static ModelSnapshot Take(nn.Module model)
    {
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
        var adapters = lora.LoraLayers(model).ToDictionary(l => l.layer, l => l.layer.adapter_names.ToHashSet(StringComparer.Ordinal));
        var grads = model.named_parameters().Select(p => (p.parameter, p.parameter.requires_grad)).ToList();
        return new ModelSnapshot(modules, adapters, grads, SavedModules.Capture(model));
    }

    internal void Restore(nn.Module model)
    {
        var current = model.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
        current[""] = model;
        foreach (var (path, layer) in lora.LoraLayers(model))
        {
            if (_adapters.TryGetValue(layer, out var before))
            {
                foreach (var name in layer.adapter_names.Where(n => !before.Contains(n)).ToList())
                {
                    layer.DeleteAdapter(name);
                }

                continue;
            }

            if (path.Length > 0 && _modules.TryGetValue(path, out var original) && !ReferenceEquals(original, layer))
            {
                var split = path.LastIndexOf('.');
                var parent = current[split < 0 ? "" : path[..split]];
                LoraInjector.PlanSwap(parent, path[(split + 1)..], layer, path, original.GetType())(original);
            }
        }

        SavedModules.Restore(model, _savedModules);
        foreach (var (parameter, requiresGrad) in _grads)
        {
            parameter.requires_grad = requiresGrad;
        }
    }
}
