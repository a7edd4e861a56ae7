using System.Runtime.CompilerServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// PEFT's per-adapter copies of <see cref="LoraConfig.modules_to_save"/> (its <c>ModulesToSaveWrapper</c>), kept outside the
/// module tree so that the model's <c>state_dict()</c> keys stay those of the plain model (<c>classifier.weight</c>).
/// </summary>
/// <remarks>
/// <para>The registered module is the one forward calls; it holds the values of one "slot": an adapter that lists it in
/// modules_to_save, or <see cref="Original"/> (the values the module had when the first adapter listed it). The values
/// of every other slot are stored here, keyed by the module itself, as detached clones of its <c>state_dict()</c>
/// tensors (parameters and buffers). Showing another slot copies values in place, so the module keeps its parameter
/// objects and an optimizer built on them keeps training whichever adapter is live.</para>
/// <para>The live slot follows the model's active adapters: the one active adapter that lists the module, else
/// <see cref="Original"/>; an override (set by <see cref="lora.disable_adapter"/> and <see cref="lora.adapter_names_scope"/>)
/// wins while a scope lasts.</para>
/// </remarks>
internal static class SavedModules
{
    /// <summary>The slot of the module's own values from before any adapter listed it (PEFT's <c>original_module</c>).</summary>
    internal const string Original = lora.BASE_ADAPTER_ROW;

    private static readonly ConditionalWeakTable<nn.Module, Entry> Table = new();

    /// <summary>The copies of one module.</summary>
    internal sealed class Entry
    {
        /// <summary>Values of every slot but the live one: slot → state_dict key (relative to the module) → tensor.</summary>
        internal Dictionary<string, Dictionary<string, Tensor>> Stored { get; } = new(StringComparer.Ordinal);

        /// <summary>Adapters with their own copy, in the order they were added.</summary>
        internal List<string> Adapters { get; } = [];

        /// <summary>The slot whose values the module holds now.</summary>
        internal string Live { get; set; } = Original;

        /// <summary>The slot a scope forces, or null.</summary>
        internal string? Override { get; set; }
    }

    /// <summary>The modules of <paramref name="model"/> (itself included) that have copies, with their paths.</summary>
    internal static List<(string path, nn.Module module, Entry entry)> Entries(nn.Module model)
    {
        var result = new List<(string, nn.Module, Entry)>();
        if (Table.TryGetValue(model, out var own))
        {
            result.Add(("", model, own));
        }

        foreach (var (path, module) in model.named_modules())
        {
            if (path.Length > 0 && Table.TryGetValue(module, out var entry))
            {
                result.Add((path, module, entry));
            }
        }

        return result;
    }

    /// <summary>
    /// Gives adapter <paramref name="adapter"/> its own copy of <paramref name="module"/>, taken from the original values
    /// (PEFT deep-copies the original module); nothing when it has one already.
    /// </summary>
    internal static void Register(nn.Module module, string adapter)
    {
        if (!Table.TryGetValue(module, out var entry))
        {
            entry = new Entry();
            entry.Stored[Original] = Clone(module);
            Table.Add(module, entry);
        }

        if (entry.Adapters.Contains(adapter))
        {
            return;
        }

        entry.Adapters.Add(adapter);
        entry.Stored[adapter] = entry.Live == Original ? Clone(module) : CloneValues(entry.Stored[Original]);
    }

    /// <summary>True when <paramref name="module"/> has copies and shows an adapter's (not the original values).</summary>
    internal static bool ShowsAdapter(nn.Module module) =>
        Table.TryGetValue(module, out var entry) && entry.Live != Original;

    /// <summary>
    /// The values of <paramref name="adapter"/>'s copy of the module at <paramref name="name"/>'s owner, when they are stored
    /// here (not live): the tensor for state_dict key <paramref name="name"/> of the model; null when the live module holds them.
    /// </summary>
    internal static Tensor? StoredTensor(List<(string path, nn.Module module, Entry entry)> entries, string name, string adapter)
    {
        foreach (var (path, _, entry) in entries)
        {
            var local = path.Length == 0 ? name : name.StartsWith(path + ".", StringComparison.Ordinal) ? name[(path.Length + 1)..] : null;
            if (local is not null && entry.Adapters.Contains(adapter) && entry.Live != adapter &&
                entry.Stored[adapter].TryGetValue(local, out var tensor))
            {
                return tensor;
            }
        }

        return null;
    }

    /// <summary>
    /// Throws when two of <paramref name="names"/> have their own copy of the same module: one module can show one
    /// adapter's values only (PEFT raises too).
    /// </summary>
    internal static void CheckOneCopyActive(nn.Module model, IEnumerable<string> names, string paramName)
    {
        var list = names.Distinct(StringComparer.Ordinal).ToList();
        foreach (var (path, _, entry) in Entries(model))
        {
            var owners = list.Where(entry.Adapters.Contains).ToList();
            if (owners.Count > 1)
            {
                throw new ArgumentException(
                    $"Adapters {string.Join(" and ", owners.Select(o => $"'{o}'"))} each have their own copy of module '{path}' " +
                    "(modules_to_save); only one of them can be active at a time.", paramName);
            }
        }
    }

    /// <summary>Shows, in every module of <paramref name="model"/> with copies, the slot <paramref name="active"/> (and any override) selects.</summary>
    /// <param name="model">The model.</param>
    /// <param name="active">The model's active adapters.</param>
    /// <param name="setGrad">Also set <c>requires_grad</c>: true while an adapter's copy is live, false for the original (frozen, as in PEFT).</param>
    internal static void Sync(nn.Module model, IReadOnlyList<string> active, bool setGrad)
    {
        foreach (var (_, module, entry) in Entries(model))
        {
            Show(module, entry, entry.Override ?? Selected(entry, active));
            if (setGrad)
            {
                foreach (var parameter in module.parameters())
                {
                    parameter.requires_grad = entry.Live != Original;
                }
            }
        }
    }

    /// <summary>Forces slot <paramref name="slotOf"/>(entry) on every module with copies; returns the action that ends it.</summary>
    internal static Action OverrideAll(nn.Module model, Func<Entry, string> slotOf)
    {
        var entries = Entries(model);
        var before = entries.Select(e => e.entry.Override).ToList();
        foreach (var (_, module, entry) in entries)
        {
            entry.Override = slotOf(entry);
            Show(module, entry, entry.Override);
        }

        return () =>
        {
            var active = lora.active_adapters(model);
            for (var i = 0; i < entries.Count; i++)
            {
                var (_, module, entry) = entries[i];
                entry.Override = before[i];
                Show(module, entry, entry.Override ?? Selected(entry, active));
            }
        };
    }

    /// <summary>Drops <paramref name="adapter"/>'s copies; a module it was live in shows what <paramref name="active"/> selects.</summary>
    internal static void Delete(nn.Module model, string adapter, IReadOnlyList<string> active)
    {
        foreach (var (_, module, entry) in Entries(model).Where(e => e.entry.Adapters.Contains(adapter)))
        {
            entry.Adapters.Remove(adapter);
            if (entry.Live == adapter)
            {
                Show(module, entry, entry.Override is { } o && o != adapter ? o : Selected(entry, active));
                foreach (var parameter in module.parameters())
                {
                    parameter.requires_grad = entry.Live != Original;
                }
            }

            Drop(entry, adapter);
            if (entry.Adapters.Count == 0)
            {
                Show(module, entry, Original);
                Drop(entry, Original);
                Table.Remove(module);
            }
        }
    }

    /// <summary>
    /// Forgets the copies of every module of <paramref name="model"/>, leaving the active adapter's values in the module
    /// (PEFT's <c>merge_and_unload</c>/<c>unload</c> keep the active copy).
    /// </summary>
    internal static void Forget(nn.Module model)
    {
        var active = lora.active_adapters(model);
        foreach (var (_, module, entry) in Entries(model))
        {
            entry.Override = null;
            Show(module, entry, Selected(entry, active));
            foreach (var slot in entry.Stored.Keys.ToList())
            {
                Drop(entry, slot);
            }

            Table.Remove(module);
        }
    }

    /// <summary>What <see cref="Restore"/> needs: per module with copies, its adapters and live slot.</summary>
    internal static Dictionary<nn.Module, (HashSet<string> adapters, string live)> Capture(nn.Module model)
    {
        var result = new Dictionary<nn.Module, (HashSet<string>, string)>(ReferenceEqualityComparer.Instance);
        foreach (var (_, module, entry) in Entries(model))
        {
            result[module] = (entry.Adapters.ToHashSet(StringComparer.Ordinal), entry.Live);
        }

        return result;
    }

    /// <summary>Removes the copies added since <paramref name="captured"/> was taken and shows the slots live then.</summary>
    internal static void Restore(nn.Module model, Dictionary<nn.Module, (HashSet<string> adapters, string live)> captured)
    {
        foreach (var (_, module, entry) in Entries(model))
        {
            if (!captured.TryGetValue(module, out var before))
            {
                Show(module, entry, Original);
                foreach (var slot in entry.Stored.Keys.ToList())
                {
                    Drop(entry, slot);
                }

                Table.Remove(module);
                continue;
            }

            Show(module, entry, before.live);
            foreach (var added in entry.Adapters.Where(a => !before.adapters.Contains(a)).ToList())
            {
                entry.Adapters.Remove(added);
                Drop(entry, added);
            }
        }
    }

    private static string Selected(Entry entry, IReadOnlyList<string> active) =>
        active.FirstOrDefault(entry.Adapters.Contains) ?? Original;

    /// <summary>Puts slot <paramref name="slot"/>'s values into the module, storing the outgoing live values.</summary>
    private static void Show(nn.Module module, Entry entry, string slot)
    {
        if (slot == entry.Live)
        {
            return;
        }

        var incoming = entry.Stored[slot];
        entry.Stored[entry.Live] = Clone(module);
        using (torch.no_grad())
        {
            foreach (var (key, target) in module.state_dict())
            {
                target.copy_(incoming[key]);
            }
        }

        entry.Stored.Remove(slot);
        foreach (var tensor in incoming.Values)
        {
            tensor.Dispose();
        }

        entry.Live = slot;
    }

    private static void Drop(Entry entry, string slot)
    {
        if (entry.Stored.Remove(slot, out var values))
        {
            foreach (var tensor in values.Values)
            {
                tensor.Dispose();
            }
        }
    }

    private static Dictionary<string, Tensor> Clone(nn.Module module) =>
        CloneValues(module.state_dict());

    private static Dictionary<string, Tensor> CloneValues(IEnumerable<KeyValuePair<string, Tensor>> values)
    {
        using var noGrad = torch.no_grad();
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (key, tensor) in values)
        {
            // Owned here, outside any dispose scope of the caller: the copies live as long as the module.
            result[key] = tensor.detach().clone().DetachFromDisposeScope();
        }

        return result;
    }
}
