using Mono.Cecil;
using Mono.Cecil.Cil;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Microsoft.ML.Lora compiles against publicized copies of ML.NET's assemblies (build/MlNetPublicizer), so a member of
/// ML.NET that a later version renames or removes is no compile error: it would surface as a MissingMethodException in a
/// user's <c>Model.Save</c> or <c>Model.Load</c>. The package therefore caps its Microsoft.ML dependency
/// (Directory.Packages.props) at the versions checked here: every type and member reference of the compiled
/// Microsoft.ML.Lora.dll into an ML.NET assembly must resolve in the real ML.NET assemblies this test run references
/// (the ones next to it, as at run time). See docs/ARCHITECTURE.md, "ML.NET internals".
/// </summary>
[TestClass]
public sealed class MlNetInternalsTests
{
    [TestMethod]
    public void LoraAssembly_EveryMlNetMemberUsed_ExistsInReferencedMlNet()
    {
        using var resolver = NewResolver();
        using var assembly = AssemblyDefinition.ReadAssembly(
            typeof(LoraTransformer).Assembly.Location, new ReaderParameters { AssemblyResolver = resolver });

        var result = MlNetReferences.Check(assembly.MainModule);

        Assert.IsEmpty(result.Missing,
            $"Microsoft.ML.Lora uses ML.NET members that the referenced ML.NET ({MlNetVersion(resolver)}) lacks:{Environment.NewLine}"
            + string.Join(Environment.NewLine, result.Missing));

        // The check must see the internals the model-file code uses, resolved in the real (not publicized) assemblies:
        // these members are non-public there.
        foreach (string member in new[] { "ModelSaveContext::SetVersionInfo", "ModelLoadContext::CheckAtModel", "VersionInfo::.ctor", "LoadableClassAttribute::.ctor", "CatalogUtils::GetEnvironment" })
        {
            Assert.IsTrue(result.NonPublic.Any(m => m.Contains(member, StringComparison.Ordinal)),
                $"expected a non-public use of {member}; found:{Environment.NewLine}{string.Join(Environment.NewLine, result.NonPublic)}");
        }
    }

    [TestMethod]
    public void Check_MemberAndTypeMissingFromMlNet_NamesBoth()
    {
        using var resolver = NewResolver();
        using var lora = AssemblyDefinition.ReadAssembly(
            typeof(LoraTransformer).Assembly.Location, new ReaderParameters { AssemblyResolver = resolver });
        var saveContext = lora.MainModule.GetMemberReferences().First(m => m.Name == "SetVersionInfo").DeclaringType;

        // A probe assembly that calls ModelSaveContext.SetVersionInfoV2 (no such member) and a method of a type that
        // ML.NET does not have, as code compiled against a different ML.NET would.
        using var probe = AssemblyDefinition.CreateAssembly(new AssemblyNameDefinition("Probe", new Version(1, 0)), "Probe", ModuleKind.Dll);
        var module = probe.MainModule;
        var missingMember = new MethodReference("SetVersionInfoV2", module.TypeSystem.Void, module.ImportReference(saveContext)) { HasThis = true };
        var missingType = new TypeReference(saveContext.Namespace, "ModelSaveContextV2", module, module.ImportReference(saveContext).Scope);
        var missingTypeMember = new MethodReference("Save", module.TypeSystem.Void, missingType) { HasThis = true };
        var type = new TypeDefinition("Probe", "Caller", TypeAttributes.Public | TypeAttributes.Abstract | TypeAttributes.Sealed, module.TypeSystem.Object);
        var method = new MethodDefinition("Call", MethodAttributes.Public | MethodAttributes.Static, module.TypeSystem.Void);
        var il = method.Body.GetILProcessor();
        il.Emit(OpCodes.Ldnull);
        il.Emit(OpCodes.Callvirt, missingMember);
        il.Emit(OpCodes.Ldnull);
        il.Emit(OpCodes.Callvirt, missingTypeMember);
        il.Emit(OpCodes.Ret);
        type.Methods.Add(method);
        module.Types.Add(type);
        using var stream = new MemoryStream();
        probe.Write(stream);
        stream.Position = 0;
        using var written = AssemblyDefinition.ReadAssembly(stream, new ReaderParameters { AssemblyResolver = resolver });

        var result = MlNetReferences.Check(written.MainModule);

        Assert.IsTrue(result.Missing.Any(m => m.Contains($"{saveContext.FullName}::SetVersionInfoV2()", StringComparison.Ordinal)),
            string.Join(Environment.NewLine, result.Missing));
        Assert.IsTrue(result.Missing.Any(m => m.Contains($"type {saveContext.Namespace}.ModelSaveContextV2", StringComparison.Ordinal)),
            string.Join(Environment.NewLine, result.Missing));
    }

    private static DefaultAssemblyResolver NewResolver()
    {
        var resolver = new DefaultAssemblyResolver();
        resolver.AddSearchDirectory(AppContext.BaseDirectory);
        return resolver;
    }

    private static string MlNetVersion(DefaultAssemblyResolver resolver)
    {
        var core = resolver.Resolve(new AssemblyNameReference("Microsoft.ML.Core", new Version()));
        var informational = core.CustomAttributes.FirstOrDefault(a => a.AttributeType.Name == "AssemblyInformationalVersionAttribute");
        return $"{core.MainModule.FileName}, {informational?.ConstructorArguments[0].Value ?? core.Name.Version}";
    }

    /// <summary>The references of a module into ML.NET's assemblies, resolved against the assemblies its resolver finds.</summary>
    private static class MlNetReferences
    {
        internal sealed record Result(List<string> Missing, List<string> NonPublic);

        /// <summary>ML.NET's own assemblies (Microsoft.ML.Core, .Data, .DataView, .CpuMath, .StandardTrainers, ...), not
        /// ours and not the separately versioned Tokenizers and ONNX Runtime packages.</summary>
        internal static bool IsMlNet(string assemblyName) =>
            (assemblyName == "Microsoft.ML" || assemblyName.StartsWith("Microsoft.ML.", StringComparison.Ordinal))
            && !assemblyName.StartsWith("Microsoft.ML.Lora", StringComparison.Ordinal)
            && !assemblyName.StartsWith("Microsoft.ML.Tokenizers", StringComparison.Ordinal)
            && !assemblyName.StartsWith("Microsoft.ML.OnnxRuntime", StringComparison.Ordinal);

        /// <summary>
        /// Resolves every TypeRef and MemberRef (the metadata tables that name what a module uses from other assemblies:
        /// calls, field accesses, attribute constructors, base types, signatures) that points into ML.NET.
        /// </summary>
        internal static Result Check(ModuleDefinition module)
        {
            var missing = new SortedSet<string>(StringComparer.Ordinal);
            var nonPublic = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var type in module.GetTypeReferences())
            {
                if (ScopeOf(type) is not string scope || !IsMlNet(scope))
                {
                    continue;
                }

                var definition = Resolve(type);
                if (definition is null)
                {
                    missing.Add($"{scope}: type {type.FullName}");
                }
                else if (!IsVisible(definition))
                {
                    nonPublic.Add($"{scope}: type {type.FullName}");
                }
            }

            foreach (var member in module.GetMemberReferences())
            {
                if (ScopeOf(member.DeclaringType) is not string scope || !IsMlNet(scope))
                {
                    continue;
                }

                IMemberDefinition? definition = Resolve(member);
                if (definition is null)
                {
                    missing.Add(Resolve(member.DeclaringType) is null
                        ? $"{scope}: {member.FullName} (its type {member.DeclaringType.GetElementType().FullName} is missing)"
                        : $"{scope}: {member.FullName}");
                }
                else if (!IsVisible(definition.DeclaringType) || definition switch
                {
                    MethodDefinition m => !(m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly),
                    FieldDefinition f => !(f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly),
                    _ => false,
                })
                {
                    nonPublic.Add($"{scope}: {member.FullName}");
                }
            }

            return new Result([.. missing], [.. nonPublic]);
        }

        private static string? ScopeOf(TypeReference type) => type.GetElementType().Scope switch
        {
            AssemblyNameReference name => name.Name,
            _ => null, // defined in this module
        };

        private static TypeDefinition? Resolve(TypeReference type)
        {
            try
            {
                return type.Resolve();
            }
            catch (AssemblyResolutionException)
            {
                return null;
            }
        }

        private static IMemberDefinition? Resolve(MemberReference member)
        {
            try
            {
                return member.Resolve();
            }
            catch (AssemblyResolutionException)
            {
                return null;
            }
        }

        private static bool IsVisible(TypeDefinition type)
        {
            for (var t = type; t is not null; t = t.DeclaringType)
            {
                if (!(t.IsPublic || t.IsNestedPublic || t.IsNestedFamily || t.IsNestedFamilyOrAssembly))
                {
                    return false;
                }
            }

            return true;
        }
    }
}
