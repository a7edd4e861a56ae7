// ML.NET keeps its model-file API (ModelSaveContext/ModelLoadContext members, VersionInfo, LoadableClassAttribute,
// SignatureLoadModel, ...) internal. This assembly compiles against publicized copies of Microsoft.ML.Core and
// Microsoft.ML.Data (build/MlNetPublicizer) and asks the runtime, with this attribute, to accept the access to the
// real assemblies' non-public members. Every such use lives in this folder (docs/ARCHITECTURE.md, "ML.NET internals").
[assembly: System.Runtime.CompilerServices.IgnoresAccessChecksTo("Microsoft.ML.Core")]
[assembly: System.Runtime.CompilerServices.IgnoresAccessChecksTo("Microsoft.ML.Data")]

namespace System.Runtime.CompilerServices;

/// <summary>Recognised by the .NET runtime: the named assembly's non-public members may be accessed.</summary>
[AttributeUsage(AttributeTargets.Assembly, AllowMultiple = true)]
internal sealed class IgnoresAccessChecksToAttribute : Attribute
{
    public IgnoresAccessChecksToAttribute(string assemblyName) => AssemblyName = assemblyName;

    public string AssemblyName { get; }
}
