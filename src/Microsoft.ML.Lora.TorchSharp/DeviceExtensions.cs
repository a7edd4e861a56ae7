using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>TorchSharp's <see cref="Device"/> is a class without value equality; compare type and index instead.</summary>
internal static class DeviceExtensions
{
    internal static bool SameAs(this Device a, Device b) => a.type == b.type && a.index == b.index;
}
