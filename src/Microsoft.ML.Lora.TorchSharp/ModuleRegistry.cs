using System.Reflection;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>Access to a module's registry of children (TorchSharp keeps it private and offers no replace).</summary>
internal static class ModuleRegistry
{
    private static readonly FieldInfo RegistryField = typeof(nn.Module).GetField(
        "_internal_submodules", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new InvalidOperationException("This TorchSharp version has no Module._internal_submodules field.");

    /// <summary>The registry of <paramref name="parent"/>'s direct children.</summary>
    internal static OrderedDict<string, nn.Module> Of(nn.Module parent) =>
        (OrderedDict<string, nn.Module>)RegistryField.GetValue(parent)!;

    /// <summary>Puts <paramref name="module"/> under <paramref name="name"/>, keeping the registration order.</summary>
    internal static void Replace(nn.Module parent, string name, nn.Module module) => Of(parent)[name] = module;
}
